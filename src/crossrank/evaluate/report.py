"""An experiment as a person reads it: a markdown summary (stdout) and one self-contained HTML file with the
tables and matplotlib plots embedded as base64 PNGs (per-system bars with 95% intervals, the depth curve,
per-query Δ against the first stage), plus the failure analysis."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

from crossrank.evaluate.experiment import ExperimentResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIGNIFICANCE = 0.05


def fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _marker(result: ExperimentResult, system: str, measure: str) -> str:
    """'†' when both Holm-corrected tests put the difference from the baseline below 0.05."""
    test = result.tests.get(measure, {}).get(system)
    if test is None:
        return ""
    return "†" if max(test.t_p_holm, test.randomisation_p_holm) < SIGNIFICANCE else ""


def system_rows(result: ExperimentResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table (shared by markdown and HTML)."""
    measures = list(result.config.measures)
    primary = result.config.primary
    header = ["system", *measures, f"Δ {primary}", "p (t, Holm)", "p (rand, Holm)", "W/T/L", "ms/query"]
    rows = []
    for system in result.systems:
        test = result.tests[primary].get(system.name)
        cells = [system.name + (" (baseline)" if system.name == result.baseline else "")]
        cells += [fmt(system.means[m]) + _marker(result, system.name, m) for m in measures]
        if test is None:
            cells += ["", "", "", ""]
        else:
            cells += [f"{test.delta:+.4f}", f"{test.t_p_holm:.3g}", f"{test.randomisation_p_holm:.3g}",
                      f"{test.wins}/{test.ties}/{test.losses}"]
        cells.append(fmt(system.ms_per_query, 1))
        rows.append(cells)
    return header, rows


def depth_rows(result: ExperimentResult) -> tuple[list[str], list[list[str]]]:
    header = ["depth k", f"{result.config.primary} after rerank", "recall ceiling R@k", "ms/query"]
    return header, [[str(p.depth), fmt(p.quality), fmt(p.recall_ceiling), fmt(p.ms_per_query, 1)]
                    for p in result.curve]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_summary(result: ExperimentResult) -> str:
    parts = [f"## {result.dataset} ({result.split}): {result.queries} queries, binary relevance ≥ {result.rel}",
             "", markdown_table(*system_rows(result)), "",
             f"† both Holm-corrected paired tests p < {SIGNIFICANCE} against the baseline ({result.baseline}); "
             f"ms/query = first stage batch pass / queries + median single-query rerank latency."]
    if result.curve:
        parts += ["", f"### Rerank depth ({result.curve_system})", "", markdown_table(*depth_rows(result))]
    for report in result.failures:
        parts += ["", f"### {report.system}: relevant documents the first stage never retrieved: "
                      f"{report.relevant_unretrieved}/{report.relevant_total} "
                      f"({report.queries_with_unretrieved} queries); "
                      "queries hurt most: " + (", ".join(f"{h.qid} ({h.after - h.before:+.3f})" for h in report.hurt)
                                                  or "none")]
    parts += [f"- {note}" for note in result.notes]
    return "\n".join(parts)


def figure_png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(result: ExperimentResult) -> dict[str, str]:
    """Title → base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = result.config.primary
    images = {}
    figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(result.systems)), 3.6))
    names = [s.name for s in result.systems]
    means = [s.means[primary] for s in result.systems]
    errors = [[m - s.ci[primary][0] for m, s in zip(means, result.systems, strict=True)],
              [s.ci[primary][1] - m for m, s in zip(means, result.systems, strict=True)]]
    axis.bar(names, means, yerr=errors, capsize=4, color="#4878a8")
    axis.set_ylabel(f"{primary} (95% CI)")
    axis.set_title(f"{result.dataset} {result.split}: {primary} per system")
    axis.tick_params(axis="x", rotation=20)
    images[f"{primary} per system"] = figure_png(figure)

    if result.curve:
        figure, axis = plt.subplots(figsize=(6, 3.6))
        depths = [p.depth for p in result.curve]
        axis.plot(depths, [p.quality for p in result.curve], "o-", label=f"{primary} after rerank")
        axis.plot(depths, [p.recall_ceiling for p in result.curve], "s--", label="recall ceiling R@k")
        axis.set_xscale("log")
        axis.set_xticks(depths, [str(d) for d in depths])
        axis.set_xlabel("rerank depth k")
        handles = axis.get_lines()
        if all(p.ms_per_query is not None for p in result.curve):
            cost = axis.twinx()
            handles += cost.plot(depths, [p.ms_per_query for p in result.curve], "^:", color="#c44e52",
                                 label="ms / query (right)")
            cost.set_ylabel("ms / query", color="#c44e52")
        axis.legend(handles=handles, loc="lower right", fontsize=8)
        axis.set_title(f"depth curve: {result.curve_system}")
        images["rerank depth curve"] = figure_png(figure)

    rerankers = [s for s in result.systems if s.first_stage is not None]
    if rerankers:
        figure, axis = plt.subplots(figsize=(6, 3.6))
        for system in rerankers:
            before = _first_stage_values(result, system.first_stage or "")
            if before is None:
                continue
            qids = sorted(system.per_query[primary])
            axis.scatter([before[q] for q in qids], [system.per_query[primary][q] - before[q] for q in qids],
                         s=12, alpha=0.7, label=system.name)
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_xlabel(f"first-stage {primary}")
        axis.set_ylabel(f"Δ {primary} after rerank")
        axis.legend(fontsize=8)
        axis.set_title("per-query change vs the first stage")
        images["per-query Δ"] = figure_png(figure)
    return images


def _first_stage_values(result: ExperimentResult, first: str) -> dict[str, float] | None:
    try:
        return result.system(first).per_query[result.config.primary]
    except KeyError:
        return None


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _failure_html(result: ExperimentResult) -> str:
    parts = []
    for report in result.failures:
        parts.append(f"<h3>{html.escape(report.system)} vs {html.escape(report.baseline)}</h3>")
        parts.append(f"<p>Judged-relevant documents the first stage never retrieved: "
                     f"{report.relevant_unretrieved} of {report.relevant_total} "
                     f"in {report.queries_with_unretrieved} queries — no reranker can recover these.</p>")
        for hurt in report.hurt:
            parts.append(f"<h4>{html.escape(hurt.qid)}: {html.escape(hurt.query)} — {report.measure} "
                         f"{hurt.before:.3f} → {hurt.after:.3f}</h4>")
            rows = [[kind, m.doc_id, "unjudged" if m.grade is None else str(m.grade), str(m.rank_before or "—"),
                     str(m.rank_after or "—"), m.snippet]
                    for kind, moves in (("promoted", hurt.promoted), ("demoted", hurt.demoted)) for m in moves]
            parts.append(html_table(["move", "doc", "grade", "rank before", "rank after", "text"], rows)
                         if rows else "<p>Same top documents, reordered.</p>")
        if report.unretrieved_examples:
            parts.append("<h4>Relevant but never retrieved (examples)</h4>")
            parts.append(html_table(["query", "doc", "grade", "text"], [
                [f"{e['qid']}: {e['query']}", e["doc_id"], str(e["grade"]), e["snippet"]]
                for e in report.unretrieved_examples]))
    return "".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}
.note{color:#555;font-size:13px}"""


def render_html(result: ExperimentResult) -> str:
    title = f"crossrank eval: {result.dataset} ({result.split})"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{result.queries} judged queries; binary measures count grade ≥ {result.rel} as relevant; "
             f"baseline <b>{html.escape(result.baseline)}</b>; rerank depth {result.config.depth}.</p>",
             "<h2>Systems</h2>", html_table(*system_rows(result)),
             f"<p class='note'>† both Holm-corrected paired tests (t-test and randomisation, "
             f"{result.config.permutations} permutations) p &lt; {SIGNIFICANCE} against the baseline. "
             f"W/T/L: queries where the system's {html.escape(result.config.primary)} is above / equal to / "
             f"below the baseline's. ms/query: the first stage's batch pass divided by the queries plus the "
             f"median single-query rerank latency over {result.config.timing_queries} queries.</p>"]
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in result.notes]
    for name, image in plots(result).items():
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{image}'>"
                     f"<figcaption>{html.escape(name)}</figcaption></figure>")
    if result.curve:
        parts += [f"<h2>Rerank depth: {html.escape(result.curve_system or '')}</h2>", html_table(*depth_rows(result))]
    parts += ["<h2>Failure analysis</h2>", _failure_html(result), "</body></html>"]
    return "".join(parts)
