// crossrank workbench: a client of the public JSON API. Every piece of data reaches the page through
// textContent or an attribute, never as markup, so text from documents and queries cannot become HTML.
"use strict";

const KEY_STORE = "crossrank-api-key";
const JUDGE_STORE = "crossrank-judge";
const INDEX_STORE = "crossrank-index";
const TIE_TOLERANCE = 1e-9; // as crossrank.evaluate.significance
const GRADES = [[2, "Relevant", "relevant"], [1, "Partly", "partly"], [0, "Not", "not relevant"]];
const SIGNALS = [
  ["bm25", "BM25"], ["dense", "dense"], ["fusion", "fusion (RRF)"], ["rerank", "cross-encoder"],
  ["rerank_interpolated", "CE + first stage"], ["ltr", "LTR"],
];
const SVG = "http://www.w3.org/2000/svg";

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);

function el(tag, props = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.setAttribute("class", value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

const fmt = (value, digits = 3) => (value === null || value === undefined || Number.isNaN(value) ? "—"
  : Number(value).toFixed(digits));

// ---- messages and the API key ----------------------------------------------------------------------------

function showMessage(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
}

function clearMessage() {
  $("#message").className = "hidden";
  $("#message").textContent = "";
}

function askForKey(reason) {
  $("#key-form").classList.remove("hidden");
  if (reason) showMessage(reason);
  $("#api-key").focus();
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new ApiError(0, `the server did not answer (${error.message}); is crossrank serve still running?`);
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text || response.statusText;
    try { message = JSON.parse(text).message ?? message; } catch { /* not JSON: keep the text */ }
    if (response.status === 401) askForKey(`The server refused the API key: ${message}`);
    throw new ApiError(response.status, message);
  }
  return (response.headers.get("content-type") || "").includes("json") ? JSON.parse(text) : text;
}

function failed(what) {
  return (error) => {
    if (error.status === 401) return; // the key form already says so
    showMessage(`${what}: ${error.message}${error.status ? ` (HTTP ${error.status})` : ""}`);
  };
}

function judgeName() {
  const name = $("#judge").value.trim();
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) {
    showMessage("Enter your judge name at the top right (letters, digits, '_', '.', '-') to record judgments.");
    $("#judge").focus();
    return null;
  }
  localStorage.setItem(JUDGE_STORE, name);
  return name;
}

// ---- pipelines -------------------------------------------------------------------------------------------

function wholeNumber(selector, label, low, high) {
  const value = Number($(selector).value);
  if (!Number.isInteger(value) || value < low || value > high) {
    throw new ApiError(0, `${label} must be a whole number from ${low} to ${high}`);
  }
  return value;
}

function pipelineSpec(p) {
  const first = $(`#${p}-first`).value;
  const spec = {
    first_k: wholeNumber(`#${p}-first-k`, "candidates", 1, 10000),
    rerank_k: wholeNumber(`#${p}-rerank-k`, "rerank top", 0, 1000),
    ltr: $(`#${p}-ltr`).checked,
  };
  if (first !== "hybrid") spec.retrievers = [first];
  else spec.fusion = $(`#${p}-fusion`).value;
  const weight = $(`#${p}-weight`).value;
  if (weight !== "" && spec.rerank_k > 0) spec.first_stage_weight = Number(weight);
  return spec;
}

function pipelineLabel(p) {
  const stage = $(`#${p}-first`).value, fusion = $(`#${p}-fusion`).value;
  const first = stage === "hybrid" && fusion !== "rrf" ? `${stage}(${fusion})` : stage;
  const rerank = Number($(`#${p}-rerank-k`).value);
  if (!rerank) return first + ($(`#${p}-ltr`).checked ? ">>ltr" : "");
  const weight = $(`#${p}-weight`).value;
  return `${first}>>ce@${rerank}${weight === "" ? "" : ` w=${weight}`}${$(`#${p}-ltr`).checked ? ">>ltr" : ""}`;
}

// Pipeline controls ⇄ URL parameters (a.first, a.rerank_k, ...), so a view can be linked and reloaded.
const PIPELINE_FIELDS = [["first", "first"], ["fusion", "fusion"], ["first_k", "first-k"], ["rerank_k", "rerank-k"],
  ["weight", "weight"]];

function pipelineToUrl(p, search) {
  for (const [name, id] of PIPELINE_FIELDS) search.set(`${p}.${name}`, $(`#${p}-${id}`).value);
  if ($(`#${p}-ltr`).checked) search.set(`${p}.ltr`, "1");
}

function pipelineFromUrl(p, search) {
  for (const [name, id] of PIPELINE_FIELDS) {
    const value = search.get(`${p}.${name}`);
    if (value !== null) $(`#${p}-${id}`).value = value;
  }
  if (search.get(`${p}.ltr`) === "1" && !$(`#${p}-ltr`).disabled) $(`#${p}-ltr`).checked = true;
}

// An evaluation system name ("bm25", "hybrid>>ce", "dense>>ce+") as the controls' URL parameters.
function evalNameToUrl(p, name, depth, search) {
  const [first, reranker] = name.split(">>");
  search.set(`${p}.first`, ["bm25", "dense", "hybrid"].includes(first) ? first : "hybrid");
  search.set(`${p}.rerank_k`, reranker && reranker.startsWith("ce") ? String(depth || 100) : "0");
  search.set(`${p}.weight`, reranker && reranker.startsWith("ce+") ? "" : "0");
}

// ---- indexes ---------------------------------------------------------------------------------------------

async function loadIndexes() {
  const select = $("#index");
  const { indexes } = await api("GET", "/indexes");
  select.replaceChildren(...indexes.map((name) => el("option", { value: name }, name)));
  const wanted = params.get("index");
  if (wanted && !indexes.includes(wanted)) {
    showMessage(`There is no index named "${wanted}" on this server` +
      (indexes.length ? `; pick one of: ${indexes.join(", ")}.` : "."));
  }
  const chosen = [wanted, localStorage.getItem(INDEX_STORE)].find((name) => name && indexes.includes(name));
  if (chosen) select.value = chosen;
  if (!indexes.length) {
    showMessage("This server has no indexes yet: start it with --index-root DIR holding indexes built by " +
      "`crossrank index`, or add documents with POST /indexes/NAME/documents?create=true.");
  }
  select.addEventListener("change", () => localStorage.setItem(INDEX_STORE, select.value));
  return indexes;
}

// Load the index list; true when the URL names a query to run on an index this server has.
async function autoRun() {
  const indexes = await loadIndexes();
  const wanted = params.get("index");
  return Boolean(params.get("q")) && (!wanted || indexes.includes(wanted)) && indexes.length > 0;
}

function chosenIndex() {
  const index = $("#index").value;
  if (!index) throw new ApiError(0, "pick an index first");
  return index;
}

function queryText() {
  const query = $("#query").value.trim();
  if (!query) {
    $("#query").focus();
    throw new ApiError(0, "type a query first");
  }
  return query;
}

async function search(index, query, spec, k) {
  return api("POST", "/search", { index, query, k, explain: true, ...spec });
}

// ---- text with the query's terms highlighted -------------------------------------------------------------

// The terms come from the server (`query_terms`: BM25's own analysis, stop words dropped); one-letter words are
// left unmarked, they would light up every "a" and "s".
function highlighted(text, queryTerms) {
  const terms = (queryTerms || []).filter((t) => [...t].length >= 2);
  if (!terms.length) return [text];
  const escaped = terms.sort((a, b) => b.length - a.length).map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(${escaped.join("|")})(?![\\p{L}\\p{N}])`, "giu");
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parts.push(text.slice(last, match.index), el("mark", {}, match[0]));
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}

function bar(fraction, kind) {
  const fill = el("span", { class: `fill ${kind || ""}` });
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return el("span", { class: "bar" }, fill);
}

// ---- the search view -------------------------------------------------------------------------------------

function renderTrace(trace) {
  const longest = Math.max(...trace.map((stage) => stage.ms), 1e-9);
  const total = trace.reduce((sum, stage) => sum + stage.ms, 0);
  $("#trace").replaceChildren(
    ...trace.map((stage) => el("div", { class: "trace-stage", dataset: { stage: stage.stage, ms: stage.ms } },
      el("span", { class: "label" }, stage.stage),
      bar(stage.ms / longest, "time"),
      el("span", { class: "value" }, `${fmt(stage.ms, 1)} ms · ${stage.in} → ${stage.out}`))),
    el("div", { class: "trace-total" }, `total ${fmt(total, 1)} ms`));
}

function movement(hit, rank) {
  if (hit.first_stage_rank === null || hit.first_stage_rank === undefined) return el("span", { class: "moved" }, "—");
  const moved = hit.first_stage_rank - rank;
  const title = `first stage rank ${hit.first_stage_rank} → final rank ${rank}`;
  if (moved > 0) return el("span", { class: "moved up", title }, `▲ ${moved}`);
  if (moved < 0) return el("span", { class: "moved down", title }, `▼ ${-moved}`);
  return el("span", { class: "moved same", title }, "=");
}

function judgeButtons(hit, query, index) {
  return el("td", { class: "judge-cell" }, GRADES.map(([grade, label, meaning]) => el("button", {
    type: "button", class: `grade grade-${grade}`, "aria-pressed": "false", title: `Mark ${meaning}`,
    dataset: { grade: String(grade) }, onclick: () => recordJudgment(index, query, hit, grade),
  }, label)));
}

let current = null; // the search view's state: {index, query, hits}

async function recordJudgment(index, query, hit, grade) {
  const judge = judgeName();
  if (!judge) return;
  try {
    await api("POST", `/indexes/${encodeURIComponent(index)}/judgments`,
      { judge, query, doc_id: hit.doc_id, passage_id: hit.id, grade });
    markGrades(new Map([[hit.doc_id, grade]]));
    showMessage(`Saved: "${hit.title || hit.doc_id}" is ${GRADES.find((g) => g[0] === grade)[2]} (judge ${judge}).`, "ok");
  } catch (error) {
    failed("Could not save the judgment")(error);
  }
}

function markGrades(grades) {
  for (const row of document.querySelectorAll("#results tr[data-doc-id]")) {
    if (!grades.has(row.dataset.docId)) continue;
    const grade = grades.get(row.dataset.docId);
    row.dataset.grade = String(grade);
    for (const button of row.querySelectorAll("button.grade")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.grade) === grade));
    }
  }
}

async function loadGrades(index, query) {
  const judge = $("#judge").value.trim();
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(judge)) return;
  const path = `/indexes/${encodeURIComponent(index)}/judgments?query=${encodeURIComponent(query)}` +
    `&judge=${encodeURIComponent(judge)}`;
  const { judgments } = await api("GET", path);
  markGrades(new Map(judgments.map((j) => [j.doc_id, j.grade])));
}

function renderResults(response) {
  const hits = response.results;
  const signals = SIGNALS.filter(([name]) => hits.some((hit) => name in hit.scores));
  const ranges = Object.fromEntries(signals.map(([name]) => {
    const values = hits.map((hit) => hit.scores[name]).filter((v) => v !== undefined);
    return [name, [Math.min(...values), Math.max(...values)]];
  }));
  const hasProbability = hits.some((hit) => "rerank_probability" in hit.scores);
  const header = el("tr", {}, el("th", {}, "#"), el("th", { title: "Rank change from the first stage" }, "moved"),
    el("th", {}, "passage (the window the model scored)"),
    signals.map(([name, label]) => el("th", { class: "signal", dataset: { signal: name } }, label)),
    hasProbability ? el("th", { title: "Calibrated probability of relevance" }, "probability") : null,
    el("th", {}, "judgment"));
  const rows = hits.map((hit, i) => el("tr", { dataset: { docId: hit.doc_id, passageId: hit.id },
    onclick: () => selectRow(i) },
    el("td", { class: "rank" }, String(i + 1)),
    el("td", {}, movement(hit, i + 1)),
    el("td", { class: "passage" },
      el("div", { class: "title" }, highlighted(hit.title || hit.doc_id, response.query_terms)),
      el("div", { class: "ids" }, `document ${hit.doc_id} · passage ${hit.id}`),
      el("div", { class: "text" }, highlighted(hit.text, response.query_terms))),
    signals.map(([name]) => {
      if (!(name in hit.scores)) return el("td", { class: "signal missing", dataset: { signal: name } }, "not seen");
      const [low, high] = ranges[name];
      const rank = hit.ranks[name];
      return el("td", { class: "signal", dataset: { signal: name, score: hit.scores[name], rank: rank ?? "" } },
        bar(high > low ? (hit.scores[name] - low) / (high - low) : 1, name),
        el("span", { class: "value" }, `${fmt(hit.scores[name])}${rank ? ` #${rank}` : ""}`));
    }),
    hasProbability ? el("td", { class: "probability", dataset: { probability: hit.scores.rerank_probability ?? "" } },
      "rerank_probability" in hit.scores ? [bar(hit.scores.rerank_probability, "probability"),
        el("span", { class: "value" }, fmt(hit.scores.rerank_probability))] : "—") : null,
    judgeButtons(hit, response.query, response.index)));
  $("#results").replaceChildren(el("thead", {}, header), el("tbody", {}, rows));
  selectRow(rows.length ? 0 : -1);
}

function selectRow(i) {
  const rows = [...document.querySelectorAll("#results tbody tr")];
  rows.forEach((row, j) => row.classList.toggle("selected", j === i));
  if (rows[i]) rows[i].scrollIntoView({ block: "nearest" });
}

function onResultKeys(event) {
  if (event.key === "Escape" && event.target.closest("input, select")) {
    event.target.blur(); // the grading keys now reach the results
    return;
  }
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  const rows = [...document.querySelectorAll("#results tbody tr")];
  if (!rows.length) return;
  const at = rows.findIndex((row) => row.classList.contains("selected"));
  const grade = { 2: 2, r: 2, 1: 1, p: 1, 0: 0, n: 0 }[event.key];
  if (event.key === "j" || event.key === "ArrowDown") selectRow(Math.min(rows.length - 1, at + 1));
  else if (event.key === "k" || event.key === "ArrowUp") selectRow(Math.max(0, at - 1));
  else if (grade !== undefined && at >= 0) {
    rows[at].querySelector(`button.grade-${grade}`).click();
  } else return;
  event.preventDefault();
}

async function runSearch() {
  clearMessage();
  try {
    const index = chosenIndex();
    const query = queryText();
    const spec = pipelineSpec("a");
    const k = wholeNumber("#k", "show", 1, 100);
    $("#run").disabled = true;
    const response = await search(index, query, spec, k);
    const url = new URLSearchParams({ index, q: query, k: String(k) });
    pipelineToUrl("a", url);
    history.replaceState(null, "", `?${url}`);
    $("#results-section").classList.remove("hidden");
    $("#summary").replaceChildren(`${response.results.length} results for `, el("q", {}, query),
      ` on ${index} · `, el("code", {}, response.pipeline || ""));
    renderTrace(response.trace || []);
    renderResults(response);
    current = { index, query };
    if (!response.results.length) showMessage("No passage matched this query.", "info");
    await loadGrades(index, query).catch(failed("Could not load your judgments"));
  } catch (error) {
    failed("Search failed")(error);
  } finally {
    $("#run").disabled = false;
  }
}

async function searchView() {
  pipelineFromUrl("a", params);
  if (params.get("q")) $("#query").value = params.get("q");
  if (params.get("k")) $("#k").value = params.get("k");
  $("#search-form").addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
  document.addEventListener("keydown", onResultKeys);
  if (await autoRun()) await runSearch();
}

// ---- the compare view ------------------------------------------------------------------------------------

function rankedItem(hit, rank, queryTerms) {
  return el("li", { dataset: { id: hit.id, docId: hit.doc_id } },
    el("span", { class: "rank" }, String(rank)),
    el("div", {},
      el("div", { class: "title" }, highlighted(hit.title || hit.doc_id, queryTerms)),
      el("div", { class: "ids" }, `${hit.doc_id} · score ${fmt(hit.score)}`),
      el("div", { class: "text short" }, highlighted(hit.text.slice(0, 200), queryTerms))));
}

function drawLinks() {
  const svg = $("#links");
  const box = svg.getBoundingClientRect();
  const left = [...document.querySelectorAll("#list-a li[data-id]")];
  const right = new Map([...document.querySelectorAll("#list-b li[data-id]")].map((li) => [li.dataset.id, li]));
  const height = Math.max($("#list-a").offsetHeight, $("#list-b").offsetHeight);
  svg.setAttribute("height", String(height));
  svg.setAttribute("viewBox", `0 0 ${box.width} ${height}`);
  const lines = [];
  left.forEach((li, i) => {
    const match = right.get(li.dataset.id);
    if (!match) return;
    const y1 = li.getBoundingClientRect().top + li.offsetHeight / 2 - box.top;
    const y2 = match.getBoundingClientRect().top + match.offsetHeight / 2 - box.top;
    const j = [...right.keys()].indexOf(li.dataset.id);
    lines.push(el("svg:line", { x1: 0, y1, x2: box.width, y2, class: j < i ? "up" : j > i ? "down" : "same",
      dataset: { id: li.dataset.id } }, el("svg:title", {}, `${li.dataset.docId}: #${i + 1} → #${j + 1}`)));
  });
  svg.replaceChildren(...lines);
}

async function runCompare() {
  clearMessage();
  try {
    const index = chosenIndex();
    const query = queryText();
    const k = wholeNumber("#k", "show", 1, 100);
    const [a, b] = [pipelineSpec("a"), pipelineSpec("b")];
    $("#run").disabled = true;
    const [left, right] = await Promise.all([search(index, query, a, k), search(index, query, b, k)]);
    const url = new URLSearchParams({ index, q: query, k: String(k) });
    pipelineToUrl("a", url);
    pipelineToUrl("b", url);
    history.replaceState(null, "", `?${url}`);
    $("#compare-section").classList.remove("hidden");
    $("#list-a").replaceChildren(el("li", { class: "head" }, pipelineLabel("a")),
      ...left.results.map((hit, i) => rankedItem(hit, i + 1, left.query_terms)));
    $("#list-b").replaceChildren(el("li", { class: "head" }, pipelineLabel("b")),
      ...right.results.map((hit, i) => rankedItem(hit, i + 1, right.query_terms)));
    const ids = new Set(left.results.map((hit) => hit.id));
    const shared = right.results.filter((hit) => ids.has(hit.id)).length;
    const cutoff = Math.max(left.results.length, right.results.length, 1);
    $("#overlap").dataset.overlap = String(shared);
    $("#overlap").textContent = `overlap@${k}: ${shared} of ${cutoff} passages (${fmt(100 * shared / cutoff, 0)}%)` +
      ` · ${left.results.length - shared} only on the left · ${right.results.length - shared} only on the right`;
    drawLinks();
  } catch (error) {
    failed("Compare failed")(error);
  } finally {
    $("#run").disabled = false;
  }
}

async function compareView() {
  pipelineFromUrl("a", params);
  pipelineFromUrl("b", params);
  if (params.get("q")) $("#query").value = params.get("q");
  if (params.get("k")) $("#k").value = params.get("k");
  $("#compare-form").addEventListener("submit", (event) => { event.preventDefault(); runCompare(); });
  window.addEventListener("resize", () => { if ($("#list-a li")) drawLinks(); });
  const run = await autoRun();
  await reportPicker();
  if (run) await runCompare();
}

// ---- per-query win/tie/loss chart (reports and judged evaluations) ----------------------------------------

function perQueryChart(container, { system, baseline, values, texts, open }) {
  const rows = Object.keys(system).map((qid) => ({ qid, delta: system[qid] - (baseline[qid] ?? 0) }))
    .sort((x, y) => y.delta - x.delta);
  const wins = rows.filter((r) => r.delta > TIE_TOLERANCE).length;
  const losses = rows.filter((r) => r.delta < -TIE_TOLERANCE).length;
  const width = 760, height = 180, middle = height / 2;
  const step = Math.min(24, rows.length ? width / rows.length : width); // one bar per query
  const scale = Math.max(...rows.map((r) => Math.abs(r.delta)), 1e-9);
  const bars = rows.map((row, i) => {
    const size = (Math.abs(row.delta) / scale) * (middle - 4);
    const kind = row.delta > TIE_TOLERANCE ? "win" : row.delta < -TIE_TOLERANCE ? "loss" : "tie";
    const text = texts[row.qid];
    return el("svg:rect", {
      x: i * step, y: row.delta >= 0 ? middle - size : middle, width: Math.max(step - 1, 1), height: Math.max(size, 1),
      class: `${kind}${text ? " clickable" : ""}`, dataset: { qid: row.qid, delta: row.delta }, tabindex: text ? 0 : null,
      onclick: text ? () => open(text) : null,
      onkeydown: text ? (event) => { if (event.key === "Enter") open(text); } : null,
    }, el("svg:title", {}, `${text || row.qid}: Δ ${values} ${fmt(row.delta)}`));
  });
  container.replaceChildren(
    el("p", { class: "summary", dataset: { wins, ties: rows.length - wins - losses, losses } },
      `${wins} wins · ${rows.length - wins - losses} ties · ${losses} losses on ${values}, per query, sorted` +
      (Object.keys(texts).length ? " — click a bar to open the query" : "")),
    el("svg:svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width, height },
      el("svg:line", { x1: 0, y1: middle, x2: width, y2: middle, class: "axis" }), bars));
}

function openInCompare(index, a, b) {
  return (text) => {
    const url = new URLSearchParams({ q: text });
    if (index) url.set("index", index);
    for (const [key, value] of [...a, ...b]) url.set(key, value);
    location.href = `/ui/compare?${url}`;
  };
}

function namesToUrl(system, baseline, depth) {
  const a = new URLSearchParams();
  const b = new URLSearchParams();
  evalNameToUrl("a", baseline, depth, a);
  evalNameToUrl("b", system, depth, b);
  return [[...a], [...b]];
}

// The report/system/baseline pickers of the compare and reports views.
async function reportPicker(initial) {
  const { reports } = await api("GET", "/reports");
  const pick = $("#report-pick");
  const state = {};
  const draw = () => {
    if (!state.data) return;
    const primary = state.data.config.measures[0];
    const by = Object.fromEntries(state.data.systems.map((s) => [s.name, s.per_query[primary] || {}]));
    const system = $("#report-system").value;
    const baseline = $("#report-baseline").value;
    const index = $("#index").value;
    const [a, b] = namesToUrl(system, baseline, state.data.config.depth);
    perQueryChart($("#per-query"), { system: by[system], baseline: by[baseline], values: primary,
      texts: state.data.query_text || {}, open: openInCompare(index, a, b) });
  };
  const load = async (name) => {
    state.data = await api("GET", `/reports/${name.split("/").map(encodeURIComponent).join("/")}`);
    const names = state.data.systems.map((s) => s.name);
    $("#report-system").replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    $("#report-baseline").replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    $("#report-baseline").value = state.data.baseline;
    $("#report-system").value = names.find((n) => n !== state.data.baseline) || names[0];
    draw();
    return state.data;
  };
  $("#report-system").addEventListener("change", draw);
  $("#report-baseline").addEventListener("change", draw);
  $("#index").addEventListener("change", draw);
  if (pick) {
    pick.replaceChildren(el("option", { value: "" }, reports.length ? "choose a report" : "no reports on this server"),
      ...reports.map((r) => el("option", { value: r.name }, `${r.name} (${r.queries} queries)`)));
    pick.addEventListener("change", () => { if (pick.value) load(pick.value).catch(failed("Could not load the report")); });
  }
  return { reports, load };
}

// ---- the judgments view ----------------------------------------------------------------------------------

async function showJudgments() {
  clearMessage();
  try {
    const index = chosenIndex();
    const judge = $("#judge-filter").value;
    const { judgments, judges } = await api("GET", `/indexes/${encodeURIComponent(index)}/judgments` +
      (judge ? `?judge=${encodeURIComponent(judge)}` : ""));
    $("#judge-filter").replaceChildren(el("option", { value: "" }, "all judges"),
      ...judges.map((name) => el("option", { value: name }, name)));
    $("#judge-filter").value = judge;
    const queries = new Set(judgments.map((j) => j.query_id));
    $("#judgment-summary").textContent = `${judgments.length} judgments on ${queries.size} queries by ` +
      `${judge ? 1 : judges.length} judge(s) in ${index}` + (judgments.length ? "" :
      " — search, then mark results Relevant / Partly / Not to record some.");
    const grades = Object.fromEntries(GRADES.map(([grade, label]) => [grade, label]));
    $("#judgments").replaceChildren(
      el("thead", {}, el("tr", {}, ["when (UTC)", "judge", "query", "document", "grade"].map((h) => el("th", {}, h)))),
      el("tbody", {}, judgments.map((j) => el("tr", { dataset: { queryId: j.query_id, docId: j.doc_id } },
        el("td", {}, j.time), el("td", {}, j.judge),
        el("td", {}, el("a", { href: `/ui?${new URLSearchParams({ index, q: j.query })}` }, j.query)),
        el("td", {}, j.doc_id), el("td", { class: `grade-${j.grade}` }, grades[j.grade])))));
  } catch (error) {
    failed("Could not load judgments")(error);
  }
}

async function exportQrels() {
  clearMessage();
  try {
    const index = chosenIndex();
    const judge = $("#judge-filter").value;
    const text = await api("GET", `/indexes/${encodeURIComponent(index)}/judgments/qrels` +
      (judge ? `?judge=${encodeURIComponent(judge)}` : ""));
    const link = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/plain" })),
      download: `${index}-qrels.txt` });
    document.body.append(link);
    link.click();
    link.remove();
    showMessage(`Exported ${text.split("\n").filter(Boolean).length} qrels lines as ${index}-qrels.txt.`, "ok");
  } catch (error) {
    failed("Export failed")(error);
  }
}

async function evaluateJudgments() {
  clearMessage();
  try {
    const index = chosenIndex();
    const labels = [pipelineLabel("a"), pipelineLabel("b")];
    if (labels[0] === labels[1]) labels[1] += " (B)";
    const judge = $("#judge-filter").value || null;
    $("#evaluate").disabled = true;
    showMessage("Evaluating: every judged query runs through both pipelines…", "info");
    const result = await api("POST", `/indexes/${encodeURIComponent(index)}/judgments/evaluate`,
      { pipelines: [{ name: labels[0], ...pipelineSpec("a") }, { name: labels[1], ...pipelineSpec("b") }], judge });
    clearMessage();
    const primary = result.measures[0];
    $("#evaluation").classList.remove("hidden");
    $("#evaluation-table").replaceChildren(
      el("thead", {}, el("tr", {}, ["system", ...result.measures, `Δ ${primary}`, "p (rand, Holm)", "W/T/L"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, result.systems.map((system) => {
        const test = result.tests[system.name];
        return el("tr", { dataset: { system: system.name } },
          el("td", {}, system.name + (system.name === result.baseline ? " (baseline)" : "")),
          result.measures.map((m) => el("td", { dataset: { measure: m, value: system.means[m] } }, fmt(system.means[m], 4))),
          el("td", {}, test ? fmt(test.delta, 4) : "—"), el("td", {}, test ? fmt(test.randomisation_p_holm, 3) : "—"),
          el("td", {}, test ? `${test.wins}/${test.ties}/${test.losses}` : "—"));
      })),
      el("caption", {}, `${result.queries} judged queries of ${index}` + (judge ? `, judge ${judge}` : ", all judges")));
    const by = Object.fromEntries(result.systems.map((s) => [s.name, s.per_query[primary]]));
    const a = new URLSearchParams();
    const b = new URLSearchParams();
    pipelineToUrl("a", a);
    pipelineToUrl("b", b);
    perQueryChart($("#per-query"), { system: by[labels[1]], baseline: by[labels[0]], values: primary,
      texts: result.query_text, open: openInCompare(index, [...a], [...b]) });
  } catch (error) {
    failed("Evaluation failed")(error);
  } finally {
    $("#evaluate").disabled = false;
  }
}

async function judgmentsView() {
  $("#judgments-form").addEventListener("submit", (event) => { event.preventDefault(); showJudgments(); });
  $("#evaluate-form").addEventListener("submit", (event) => { event.preventDefault(); evaluateJudgments(); });
  $("#export").addEventListener("click", exportQrels);
  $("#index").addEventListener("change", () => { $("#judge-filter").value = ""; showJudgments(); });
  const indexes = await loadIndexes();
  if (indexes.length) await showJudgments();
}

// ---- the reports view ------------------------------------------------------------------------------------

function depthCurve(curve, measure) {
  const points = (curve && curve.points) || [];
  if (!points.length) return el("p", { class: "hint" }, "This report has no depth curve.");
  const width = 480, height = 200, pad = 36;
  const depths = points.map((p) => p.depth);
  const values = points.flatMap((p) => [p.quality, p.recall_ceiling]).filter((v) => v !== null);
  const [low, high] = [Math.min(...values, 0), Math.max(...values, 1e-9)];
  const x = (d) => pad + (Math.log(d) - Math.log(depths[0])) / ((Math.log(depths.at(-1)) - Math.log(depths[0])) || 1)
    * (width - 2 * pad);
  const y = (v) => height - pad - ((v - low) / (high - low || 1)) * (height - 2 * pad);
  const line = (key, kind) => el("svg:polyline", { class: kind,
    points: points.filter((p) => p[key] !== null).map((p) => `${x(p.depth)},${y(p[key])}`).join(" ") });
  return el("svg:svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width, height },
    line("recall_ceiling", "ceiling"), line("quality", "quality"),
    points.map((p) => el("svg:circle", { cx: x(p.depth), cy: y(p.quality), r: 3, class: "quality" },
      el("svg:title", {}, `depth ${p.depth}: ${measure} ${fmt(p.quality, 4)}, recall ceiling ${fmt(p.recall_ceiling, 3)}`))),
    points.map((p) => el("svg:text", { x: x(p.depth), y: height - 12, class: "tick" }, String(p.depth))),
    [low, high].map((v) => el("svg:text", { x: 2, y: y(v) + 4, class: "tick" }, fmt(v, 2))),
    el("svg:text", { x: pad, y: 14, class: "tick" }, `${measure} (dots) and first-stage recall (dashed) by rerank depth ${curve.system ? `(${curve.system})` : ""}`));
}

function reportTable(data) {
  const measures = data.config.measures;
  const primary = measures[0];
  return [
    el("thead", {}, el("tr", {}, ["system", ...measures, `Δ ${primary}`, "p (t, Holm)", "p (rand, Holm)", "W/T/L",
      "ms/query"].map((h) => el("th", {}, h)))),
    el("tbody", {}, data.systems.map((system) => {
      const test = (data.tests[primary] || {})[system.name];
      return el("tr", { dataset: { system: system.name } },
        el("td", { title: system.pipeline }, system.name + (system.name === data.baseline ? " (baseline)" : "")),
        measures.map((m) => {
          const ci = (system.ci95 || {})[m];
          return el("td", { title: ci ? `95% interval ${fmt(ci[0], 4)}–${fmt(ci[1], 4)}` : null }, fmt(system.means[m], 4));
        }),
        el("td", {}, test ? fmt(test.delta, 4) : "—"), el("td", {}, test ? fmt(test.t_p_holm, 3) : "—"),
        el("td", {}, test ? fmt(test.randomisation_p_holm, 3) : "—"),
        el("td", {}, test ? `${test.wins}/${test.ties}/${test.losses}` : "—"),
        el("td", {}, fmt(system.ms_per_query, 1)));
    })),
  ];
}

async function reportsView() {
  await loadIndexes().catch(failed("Could not list indexes"));
  const picker = await reportPicker();
  const open = async (name) => {
    try {
      const data = await picker.load(name);
      history.replaceState(null, "", `?${new URLSearchParams({ report: name })}`);
      $("#report").classList.remove("hidden");
      $("#report-title").textContent = `${name}: ${data.dataset} ${data.split}, ${data.queries} queries`;
      $("#report-table").replaceChildren(...reportTable(data));
      $("#depth-curve").replaceChildren(depthCurve(data.depth_curve, data.config.measures[0]));
    } catch (error) {
      failed("Could not load the report")(error);
    }
  };
  $("#report-list").replaceChildren(
    el("thead", {}, el("tr", {}, ["report", "dataset", "split", "queries", "systems", "written"].map((h) => el("th", {}, h)))),
    el("tbody", {}, picker.reports.length ? picker.reports.map((r) => el("tr", { dataset: { report: r.name } },
      el("td", {}, el("a", { href: `?report=${encodeURIComponent(r.name)}`,
        onclick: (event) => { event.preventDefault(); open(r.name); } }, r.name)),
      el("td", {}, r.dataset), el("td", {}, r.split), el("td", {}, String(r.queries)), el("td", {}, r.systems.join(", ")),
      el("td", {}, new Date(r.modified * 1000).toISOString().slice(0, 16).replace("T", " "))))
      : el("tr", {}, el("td", { colspan: 6 }, "No reports yet: run `crossrank eval DATASET --out eval-results/NAME`, " +
        "then open this page again (the server reads --reports DIR, default ./eval-results)."))));
  if (params.get("report")) await open(params.get("report"));
}

// ---- start -----------------------------------------------------------------------------------------------

const VIEWS = { search: searchView, compare: compareView, judgments: judgmentsView, reports: reportsView };

document.addEventListener("DOMContentLoaded", () => {
  $("#judge").value = localStorage.getItem(JUDGE_STORE) || "anonymous";
  $("#judge").addEventListener("change", () => {
    if (judgeName() && current) loadGrades(current.index, current.query).catch(failed("Could not load your judgments"));
  });
  $("#key-button").addEventListener("click", () => askForKey());
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("#api-key").value.trim());
    location.reload(); // start the view afresh with the key
  });
  if (document.body.dataset.auth === "true" && !sessionStorage.getItem(KEY_STORE)) {
    askForKey("This server needs an API key (ask whoever runs it; it is one of CROSSRANK_API_KEYS).");
    return;
  }
  VIEWS[document.body.dataset.view]().catch(failed("Loading failed"));
});
