"""Context selection for an LLM: the budget is never exceeded, nothing is lost without a trace, and the floor,
granularity, dedup, order, citations and bad input behave as documented."""

from __future__ import annotations

import itertools
import json
import math
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import minilm_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from crossrank.context import STYLES, ContextSelector, token_counter
from crossrank.model.cross_encoder import CrossEncoder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> CrossEncoder:
    """The random 2-layer cross-encoder. ONNX: its export costs a second once, then it scores the property test's
    long passages about ten times faster than torch."""
    return CrossEncoder.from_pretrained(tiny_model_dir, backend="onnx")


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer.json trained here on a few sentences (no download), shipped with truncation and
    padding on as many LLM tokenizer.json files are."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<pad>"])
    tokenizer.train_from_iterator(["The cat sat on the mat.", "Volcanoes erupt lava and ash.",
                                   "<source id=\"1\" doc=\"0\">text</source>", "**[1] Title**\n", "[12] Hamlet: "],
                                  trainer)
    tokenizer.enable_truncation(16)
    tokenizer.enable_padding(length=16, pad_token="<pad>")
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def reference_count(tokenizer: Path | None):
    """A token count made independently of the code under test: the estimate's formula, or the tokenizer.json
    with truncation and padding off."""
    if tokenizer is None:
        return lambda text: math.ceil(len(text.encode("utf-8")) / 3)
    loaded = Tokenizer.from_file(str(tokenizer / "tokenizer.json" if tokenizer.is_dir() else tokenizer))
    loaded.no_truncation()
    loaded.no_padding()
    return lambda text: len(loaded.encode(text, add_special_tokens=False).ids)


class Stub:
    """A stand-in cross-encoder whose logits are chosen per text (unlisted texts score `default`): the real tiny
    model is random, so tests of the ordering logic need scores they decide."""

    name = "stub"

    def __init__(self, logits: dict[str, float], default: float = 0.0) -> None:
        self.logits, self.default = logits, default

    def score(self, queries, documents):
        return SimpleNamespace(logits=np.array([self.logits.get(d.text, self.default) for d in documents],
                                               dtype=np.float32))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float32)))


# ---- regressions: each test came with the fix of a bug it caught -----------------------------------------------


def test_tokenizer_counts_ignore_the_files_truncation_and_padding(bpe_tokenizer: Path):
    counter = token_counter(bpe_tokenizer)
    long_text = "The cat sat on the mat. " * 40
    assert counter.count(["cat", long_text]) == [reference_count(bpe_tokenizer)("cat"),
                                                  reference_count(bpe_tokenizer)(long_text)]
    assert counter.count([long_text])[0] > 16
    minilm = token_counter(minilm_path())
    assert minilm.count(["hello", "word " * 300]) == [1, 300]  # its tokenizer.json pads and truncates at 128
    given = Tokenizer.from_file(str(bpe_tokenizer))
    assert token_counter(given).count([long_text]) == counter.count([long_text])
    assert given.truncation is not None and given.padding is not None  # the caller's tokenizer is left as it was


def test_a_long_snippet_is_not_under_counted_past_the_budget():
    text = " ".join(["word"] * 400) + "."  # one sentence of 400 WordPiece tokens; MiniLM's file truncates at 128
    selector = ContextSelector(Stub({}), granularity="passage", min_probability=0, duplicate_cosine=None,
                               tokenizer=minilm_path())
    context = selector.select("q", [text], 300)
    count = reference_count(minilm_path())
    assert context.snippets == [] and [d.reason for d in context.dropped] == ["budget"]
    assert all(count(context.render(style)) <= 300 for style in STYLES)


class CountingTokens:
    """The estimate, counting how many texts it was asked to count."""

    name = "counting estimate"

    def __init__(self) -> None:
        self.texts = 0

    def count(self, texts):
        self.texts += len(texts)
        return [math.ceil(len(text.encode("utf-8")) / 3) for text in texts]


def test_packing_costs_each_piece_a_bounded_number_of_times():
    """500 sentences and a budget that leaves a little room for many rounds: each round used to re-cost the whole
    queue, 3 renders per piece, so counting grew with pieces × rounds (seconds with a real tokenizer)."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    documents = [" ".join(" ".join(words[(p + s + w) % len(words)] for w in range(20)) + f" p{p}s{s}."
                          for s in range(10)) for p in range(50)]
    counter = CountingTokens()
    selector = ContextSelector(Stub({}), granularity="sentence", min_probability=0, duplicate_cosine=None,
                               tokenizer=counter)
    context = selector.select("q", documents, 100)
    assert 1 <= len(context) and context.tokens <= 100
    assert counter.texts < 20 * 500 * len(STYLES)


class Encoder:
    """A stand-in bi-encoder: a text containing one of `same` gets that group's vector, any other text a random
    unit vector of its own (cosine near 0 with the rest)."""

    def __init__(self, *same: str) -> None:
        self.same = same

    def encode(self, texts):
        import zlib

        rows = []
        for text in texts:
            group = next((key for key in self.same if key in text), text)
            row = np.random.default_rng(zlib.crc32(group.encode())).standard_normal(64)
            rows.append(row / np.linalg.norm(row))
        return np.array(rows, dtype=np.float32)


def test_a_sentence_between_two_chosen_ones_bridges_them_into_one_snippet():
    text = "S0 zero. S1 one. S2 two. S3 three. S4 four. S5 five."
    logits = {"S0 zero.": 5, "S2 two.": 4, "S1 one.": 3}
    selector = ContextSelector(Stub(logits, default=-1), granularity="sentence", min_probability=0,
                               sentence_weight=1.0, duplicate_cosine=None)
    context = selector.select("q", [text], 1000)
    assert [s.text for s in context.snippets] == [text]  # not "S0 zero. S1 one." then "S2 two. ..." apart

    logits = {"S0 zero.": 5, "S4 four.": 4, "S2 two.": 3}  # with neighbours S2's piece (S1..S3) overlaps both
    selector = ContextSelector(Stub(logits, default=-1), granularity="sentence", min_probability=0,
                               sentence_weight=1.0, duplicate_cosine=None, neighbours=1)
    context = selector.select("q", [text], 1000)
    assert [(s.start, s.end) for s in context.snippets] == [(0, len(text))]  # no sentence quoted twice


def test_bridging_keeps_each_kept_snippets_embedding_aligned():
    passage = "S0 zero. S1 one. S2 two."
    logits = {"S0 zero.": 5, "S2 two.": 4, "Other thing.": 3.5, "S1 one.": 3, "Another thing.": 2}
    selector = ContextSelector(Stub(logits, default=-1), Encoder("thing"), granularity="sentence",
                               min_probability=0, sentence_weight=1.0)
    context = selector.select("q", [passage, "Other thing.", "Another thing."], 1000)
    assert [s.text for s in context.snippets] == [passage, "Other thing."]
    [duplicate] = context.dropped
    assert duplicate.passage_id == "2" and duplicate.reason == "duplicate"
    assert duplicate.detail.startswith("same as 1 (cosine")


def test_a_neighbour_window_overlapping_its_own_kept_snippet_joins_it_rather_than_duplicating_it():
    """Windows of one passage that share sentences embed alike (MiniLM: cosine 0.98 for neighbours=2); the piece
    must merge, not be dropped as a duplicate of its own passage and lose the sentence it was chosen for."""
    text = "S0 zero. S1 one. S2 two. S3 three."
    selector = ContextSelector(Stub({"S1 one.": 5, "S3 three.": 4}, default=-1), Encoder("S2"),
                               granularity="sentence", min_probability=0, sentence_weight=1.0, neighbours=1)
    context = selector.select("q", [text], 1000)
    assert [s.text for s in context.snippets] == [text]
    assert context.dropped == []


def test_a_passage_cut_to_its_leading_sentences_traces_the_rest():
    text = "First sentence here. Second sentence is much longer than the first one by far. Third one."
    selector = ContextSelector(Stub({}), granularity="passage", min_probability=0, duplicate_cosine=None)
    context = selector.select("q", [text], 30)
    [snippet] = context.snippets
    assert snippet.text == "First sentence here." and (snippet.start, snippet.end) == (0, 20)
    [cut] = context.dropped
    assert (cut.passage_id, cut.reason, cut.start, cut.end) == ("0", "budget", 21, len(text))
    assert text[cut.start:cut.end].startswith("Second sentence")


def test_a_blank_passage_is_traced_not_silently_lost():
    selector = ContextSelector(Stub({}), granularity="passage", min_probability=0, duplicate_cosine=None)
    context = selector.select("q", ["Alpha beta.", "  \n\t ", ""], 100)
    assert [s.passage_id for s in context.snippets] == ["0"]
    assert [(d.passage_id, d.reason, d.start, d.end) for d in context.dropped] == [("1", "empty", 0, 5),
                                                                                   ("2", "empty", 0, 0)]
    only_blank = selector.select("q", [" ", ""], 100)
    assert only_blank.abstained and "blank" in only_blank.reason and len(only_blank.dropped) == 2


def test_mmr_without_a_model_is_refused_not_silently_ignored():
    """Without a model every probability is NaN, so MMR's argmax always took the first piece: refuse it."""
    with pytest.raises(ValueError, match="mmr_lambda=1"):
        ContextSelector(None, Encoder("cat"), abstain_below=0, min_probability=0, mmr_lambda=0.5)
    documents = ["cat one.", "cat two.", "dog three."]
    logits = {"cat one.": 3, "cat two.": 2, "dog three.": 1}
    selector = ContextSelector(Stub(logits), Encoder("cat"), granularity="passage", min_probability=0,
                               duplicate_cosine=None, mmr_lambda=0.5)
    context = selector.select("q", documents, 35)  # room for two of the three (xml blocks of 14-15 tokens)
    assert [s.text for s in context.snippets] == ["cat one.", "dog three."]  # the novel one beats "cat two."


# ---- the budget is never exceeded, nothing is lost: a property over random documents ----------------------------

WORD_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789éßΩжç漢字😀-'"
words = st.text(alphabet=WORD_ALPHABET, min_size=1, max_size=10)
short_sentences = st.builds(lambda ws, end: " ".join(ws) + end, st.lists(words, min_size=1, max_size=12),
                            st.sampled_from([".", "!", "?", "…", "。", ".\"", ".)", ""]))
long_sentences = st.builds(lambda word, n: " ".join([word] * n) + ".", words, st.integers(100, 400))
passages = st.builds(lambda sentences, separator: separator.join(sentences),
                     st.lists(st.one_of(short_sentences, short_sentences, short_sentences, long_sentences),
                              min_size=1, max_size=6),
                     st.sampled_from([" ", "  ", "\n", "\n\n", " \n \n "]))
texts = st.one_of(passages, passages, passages, st.sampled_from(["", " ", "\n\n\t"]))
titles = st.one_of(st.sampled_from(["", "Plain", "<script>&\"x\" 'y'</script>", "漢字 & <b>"]),
                   st.text(alphabet="ab<&\">' ", max_size=8))
documents = st.builds(lambda documents, repeated: documents + documents[:repeated],  # some exact repeats
                      st.lists(st.fixed_dictionaries({"text": texts, "title": titles}), min_size=1, max_size=7),
                      st.integers(0, 2))
COUNTERS = ("estimate", "wordpiece", "bpe")


@pytest.fixture(scope="module")
def tiny_bi(tiny_model_dir: Path):
    """The tiny random BERT as a bi-encoder: every cosine is high (0.92-0.97), so dedup has much to do."""
    from crossrank.model.embedding import BiEncoder

    return BiEncoder.from_pretrained(tiny_model_dir, backend="onnx")


@pytest.fixture(scope="module")
def counters(bpe_tokenizer: Path) -> dict[str, tuple[object, object]]:
    """Each counter under test (built once: loading a tokenizer.json per example is slow), with its reference."""
    paths = {"estimate": None, "wordpiece": minilm_path(), "bpe": bpe_tokenizer}
    return {name: (token_counter(path), reference_count(path)) for name, path in paths.items()}


def is_boundary(text: str, index: int) -> bool:
    """text[index] is outside the text, whitespace or punctuation: a cut there is not inside a word."""
    return index < 0 or index >= len(text) or text[index].isspace() or unicodedata.category(text[index])[0] == "P"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents=documents, budget=st.integers(1, 2000), granularity=st.sampled_from(["passage", "sentence"]),
       order=st.sampled_from(["score", "document", "ends"]), neighbours=st.integers(0, 2),
       counter=st.sampled_from(COUNTERS), reranked=st.booleans(), min_probability=st.sampled_from([0.0, 0.5, 1.0]),
       abstain_below=st.sampled_from([0.0, 0.5, 1.0]), duplicate_cosine=st.sampled_from([None, 0.95]),
       mmr_lambda=st.sampled_from([1.0, 0.5]))
def test_never_over_budget_and_nothing_lost_without_a_trace(tiny, tiny_bi, counters, documents, budget, granularity,
                                                           order, neighbours, counter, reranked, min_probability,
                                                           abstain_below, duplicate_cosine, mmr_lambda):
    count, reference = counters[counter]
    selector = ContextSelector(tiny if reranked else None, tiny_bi, granularity=granularity, order=order,
                               neighbours=neighbours, min_probability=min_probability if reranked else 0,
                               abstain_below=abstain_below if reranked else 0,
                               mmr_lambda=mmr_lambda if reranked else 1, duplicate_cosine=duplicate_cosine,
                               tokenizer=count)
    context = selector.select("which river flows through Paris?", documents, budget)

    rendered = [reference(context.render(style)) for style in STYLES]
    assert max(rendered) <= budget
    assert parsed_sources(context.render("xml")) == [(str(s.marker), s.doc_id, s.title or None, s.text)
                                                     for s in context.snippets]
    assert context.tokens == max(rendered) <= budget
    assert [s.marker for s in context.snippets] == list(range(1, len(context) + 1))
    for snippet in context.snippets:
        source = documents[int(snippet.passage_id)]
        assert snippet.text == source["text"][snippet.start:snippet.end] and snippet.text.strip() == snippet.text
        assert snippet.text and is_boundary(source["text"], snippet.start - 1)
        assert is_boundary(source["text"], snippet.end)
        assert snippet.title == source["title"] and snippet.doc_id == snippet.passage_id
        assert snippet.tokens <= budget
    for a, b in itertools.combinations(context.snippets, 2):  # one passage: apart, with a sentence between
        if a.passage_id == b.passage_id:
            first, second = sorted([a, b], key=lambda s: s.start)
            assert documents[int(a.passage_id)]["text"][first.end:second.start].strip()
    for dropped in context.dropped:
        assert dropped.reason in ("empty", "abstain", "floor", "duplicate", "budget")
        assert 0 <= dropped.start <= dropped.end <= len(documents[int(dropped.passage_id)]["text"])
    traced = {s.passage_id for s in context.snippets} | {d.passage_id for d in context.dropped}
    assert traced == {str(i) for i in range(len(documents))}  # every passage quoted or traced
    for i, document in enumerate(documents):  # and every word of it: in a snippet or in a dropped span
        covered = [False] * len(document["text"])
        for span in [*context.snippets, *context.dropped]:
            if span.passage_id == str(i):
                covered[span.start:span.end] = [True] * (span.end - span.start)
        assert all(done or not char.isalnum() for char, done in zip(document["text"], covered, strict=True))

    scores = [s.score for s in context.snippets]
    if order == "score":
        assert scores == sorted(scores, reverse=True)
    elif order == "ends" and scores:
        assert scores[0] == max(scores)
        assert len(scores) < 2 or scores[-1] == sorted(scores, reverse=True)[1]
    elif order == "document":
        positions = [(int(s.passage_id), s.start) for s in context.snippets]
        assert positions == sorted(positions)
    if context.abstained:
        assert context.snippets == [] and context.reason
    json.dumps(context.to_dict())


# ---- the relevance floor and abstention (the real tiny model) ---------------------------------------------------

QUERY = "who wrote hamlet?"
DOCS = ["Hamlet is a tragedy written by William Shakespeare around 1600. It is set in Denmark.",
        "Volcanoes erupt lava and ash. Magma chambers feed them.",
        "The Seine flows through Paris. It reaches the sea at Le Havre.",
        "Glaciers move slowly and carve valleys.",
        "Shakespeare also wrote Macbeth. Macbeth is shorter. It is set in Scotland."]


def test_a_floor_no_passage_reaches_abstains_and_says_why(tiny):
    selector = ContextSelector(tiny, abstain_below=0, min_probability=1.0, duplicate_cosine=None)
    context = selector.select(QUERY, DOCS, 500)
    assert context.abstained and context.snippets == [] and context.tokens == 0 and context.render() == ""
    assert "relevance floor" in context.reason and "min_probability 1.0" in context.reason
    assert [(d.passage_id, d.reason) for d in context.dropped] == [(str(i), "floor") for i in range(len(DOCS))]


def test_abstention_is_decided_on_the_best_passage_and_the_floor_on_each(tiny):
    """abstain_below judges the list by its best passage; once the list answers, passages weaker than
    abstain_below but above the floor still go in: the two thresholds answer different questions."""
    from crossrank.types import Document

    probabilities = tiny.probabilities(tiny.score([QUERY] * len(DOCS), [Document(text=t) for t in DOCS]).logits)
    best = float(probabilities.max())
    above_best = float(np.nextafter(np.float32(best), np.float32(1)))
    context = ContextSelector(tiny, granularity="passage", abstain_below=above_best, min_probability=0,
                              duplicate_cosine=None).select(QUERY, DOCS, 1000)
    assert context.abstained and context.snippets == [] and context.render() == ""
    assert "abstain_below" in context.reason and f"{best:.3f}" in context.reason
    assert [(d.passage_id, d.reason) for d in context.dropped] == [(str(i), "abstain") for i in range(len(DOCS))]
    assert context.to_dict()["abstain_below"] == above_best
    context = ContextSelector(tiny, granularity="passage", abstain_below=best, min_probability=0,
                              duplicate_cosine=None).select(QUERY, DOCS, 1000)
    assert not context.abstained and {s.passage_id for s in context.snippets} == {str(i) for i in range(len(DOCS))}


def test_the_floor_keeps_exactly_the_passages_at_or_above_it(tiny):
    from crossrank.types import Document

    probabilities = tiny.probabilities(tiny.score([QUERY] * len(DOCS), [Document(text=t) for t in DOCS]).logits)
    floor = float(np.sort(probabilities)[len(DOCS) // 2])
    above = {str(i) for i, p in enumerate(probabilities) if p >= floor}
    assert 0 < len(above) < len(DOCS)
    context = ContextSelector(tiny, granularity="passage", abstain_below=0, min_probability=floor,
                              duplicate_cosine=None).select(QUERY, DOCS, 1000)
    assert not context.abstained and {s.passage_id for s in context.snippets} == above
    assert all(s.passage_probability >= floor for s in context.snippets)
    floored = [d for d in context.dropped if d.reason == "floor"]
    assert {d.passage_id for d in floored} == {str(i) for i in range(len(DOCS))} - above
    assert all(d.probability < floor and d.start == 0 and d.end == len(DOCS[int(d.passage_id)]) for d in floored)


def test_no_candidates_abstains_and_no_model_refuses_a_floor(tiny):
    context = ContextSelector(tiny, duplicate_cosine=None).select(QUERY, [], 100)
    assert context.abstained and context.snippets == [] and "no candidates" in context.reason
    for thresholds in ({}, {"abstain_below": 0, "min_probability": 0.01},
                       {"abstain_below": 0.01, "min_probability": 0}):
        with pytest.raises(ValueError, match="abstention needs a cross-encoder's probabilities"):
            ContextSelector(None, duplicate_cosine=None, **thresholds)  # the defaults are above 0
    baseline = ContextSelector(None, abstain_below=0, min_probability=0, duplicate_cosine=None, granularity="passage")
    context = baseline.select(QUERY, DOCS, 1000)  # first-stage order, no probabilities
    assert [s.passage_id for s in context.snippets] == [str(i) for i in range(len(DOCS))]
    assert all(math.isnan(s.probability) for s in context.snippets)


# ---- granularity ------------------------------------------------------------------------------------------------


def test_passage_granularity_cuts_a_long_passage_to_leading_whole_sentences(tiny):
    text = "Hamlet is a tragedy. It was written by William Shakespeare around 1600. It is set in Denmark."
    prefixes = ["Hamlet is a tragedy.", "Hamlet is a tragedy. It was written by William Shakespeare around 1600.",
                text]
    selector = ContextSelector(tiny, granularity="passage", min_probability=0, duplicate_cosine=None)
    seen = []
    for budget in range(1, 80):
        context = selector.select(QUERY, [text], budget)
        assert context.tokens <= budget
        if not context.snippets:
            assert not seen and [d.reason for d in context.dropped] == ["budget"]
            continue
        [snippet] = context.snippets
        assert snippet.text in prefixes and snippet.start == 0
        seen.append(prefixes.index(snippet.text))
        if snippet.text != text:  # the cut tail is traced
            [tail] = context.dropped
            assert text[tail.start:tail.end] == text[snippet.end:].strip() and tail.reason == "budget"
    assert seen == sorted(seen) and set(seen) == {0, 1, 2}  # a bigger budget never quotes less


def test_one_sentence_longer_than_the_budget_is_dropped_whole(tiny):
    text = " ".join(["Shakespeare"] * 200) + "."
    for granularity in ("passage", "sentence"):
        selector = ContextSelector(tiny, granularity=granularity, min_probability=0, duplicate_cosine=None)
        context = selector.select(QUERY, [text, "Hamlet is a play."], 50)
        assert [s.text for s in context.snippets] == ["Hamlet is a play."]
        assert [(d.passage_id, d.reason, d.start, d.end) for d in context.dropped] == [("0", "budget", 0, len(text))]


def test_sentences_are_scored_in_one_batched_pass_and_neighbours_merge_into_one_snippet(tiny, monkeypatch):
    calls = []
    score = tiny.score
    monkeypatch.setattr(tiny, "score", lambda queries, documents, **kw: calls.append(len(documents)) or
                        score(queries, documents, **kw))
    selector = ContextSelector(tiny, granularity="sentence", neighbours=1, min_probability=0, duplicate_cosine=None)
    sentences = sum(len(d.split(". ")) for d in DOCS if ". " in d)  # of the passages with more than one: 9
    context = selector.select(QUERY, DOCS, 2000)
    assert calls == [len(DOCS), sentences]  # the passages, then every sentence in one pass
    assert sorted(s.text for s in context.snippets) == sorted(DOCS)  # every sentence kept: one snippet a passage

    calls.clear()
    context = selector.select(QUERY, DOCS, 60)  # room for a few pieces, each a sentence and its neighbour
    assert calls == [len(DOCS), sentences]
    assert context.snippets and context.tokens <= 60
    for snippet in context.snippets:
        passage = DOCS[int(snippet.passage_id)]
        assert snippet.text in passage and (". " in snippet.text or ". " not in passage)  # two sentences or more


def test_sentence_score_blends_its_own_logit_with_its_passages():
    text = "Alpha one. Beta two."
    selector = ContextSelector(Stub({text: 2.0, "Alpha one.": 0.0, "Beta two.": 4.0}), granularity="sentence",
                               min_probability=0, duplicate_cosine=None, sentence_weight=0.25)
    context = selector.select("q", [text], 16)  # room for one sentence (its xml block: 14 tokens and a separator)
    [snippet] = context.snippets
    assert snippet.text == "Beta two." and snippet.score == pytest.approx(0.25 * 4.0 + 0.75 * 2.0)
    assert snippet.passage_probability == pytest.approx(1 / (1 + math.exp(-2.0)))


# ---- deduplication ----------------------------------------------------------------------------------------------


class CountingEncoder(Encoder):
    def __init__(self, *same: str) -> None:
        super().__init__(*same)
        self.texts = 0

    def encode(self, texts):
        self.texts += len(texts)
        return super().encode(texts)


def test_without_mmr_only_pieces_that_fit_are_embedded_for_the_duplicate_check():
    """100 passages and room for a few: embedding every piece to learn it does not fit cost more than reranking
    them (one bi-encoder call per piece once the budget was nearly spent)."""
    documents = [f"Passage {i} tells of river number {i} and its {i % 7} bridges." for i in range(100)]
    logits = {text: 100.0 - i for i, text in enumerate(documents)}
    encoder = CountingEncoder()
    selector = ContextSelector(Stub(logits), encoder, granularity="passage", min_probability=0)
    context = selector.select("q", documents, 60)
    assert 1 <= len(context) < 10 and encoder.texts == len(context)
    assert [d.reason for d in context.dropped] == ["budget"] * (100 - len(context))
    with_mmr = CountingEncoder()
    mmr = selector.with_settings(encoder=with_mmr, mmr_lambda=0.5).select("q", documents, 60)
    assert with_mmr.texts > len(mmr) >= 1  # MMR ranks among a window of embedded pieces


def test_an_exact_and_a_whitespace_or_case_variant_duplicate_are_dropped_naming_the_kept_one(tiny):
    text = "Hamlet was written by William Shakespeare."
    documents = [text, "Glaciers carve valleys.", "  hamlet WAS written\nby  William   Shakespeare. ", text]
    for granularity in ("passage", "sentence"):
        selector = ContextSelector(tiny, granularity=granularity, min_probability=0, duplicate_cosine=None)
        context = selector.select(QUERY, documents, 1000)
        kept = [s for s in context.snippets if "hamlet" in s.text.casefold()]
        assert len(kept) == 1 and len(context) == 2
        duplicates = [d for d in context.dropped if d.reason == "duplicate"]
        assert sorted(d.passage_id for d in duplicates) == sorted({"0", "2", "3"} - {kept[0].passage_id})
        assert all(d.detail == f"same as {kept[0].passage_id}" for d in duplicates)


def test_a_passage_inside_a_kept_one_is_a_duplicate_and_a_cosine_twin_too():
    long, inside = "Paris is the capital of France. It has two million people.", "Paris is the capital of France."
    documents = [long, inside, "Lyon is a city in France.", "Marseille is a port city."]
    logits = {long: 3, inside: 2, "Lyon is a city in France.": 1, "Marseille is a port city.": 0}
    selector = ContextSelector(Stub(logits), Encoder("city"), granularity="passage", min_probability=0)
    context = selector.select("q", documents, 1000)
    assert [s.passage_id for s in context.snippets] == ["0", "2"]
    assert [(d.passage_id, d.reason, d.detail) for d in context.dropped] == [
        ("1", "duplicate", "same as 0"), ("3", "duplicate", "same as 2 (cosine 1.000)")]


def test_containment_is_by_whole_words_not_any_substring():
    """"Yes." is not a duplicate of "I closed my eyes.", nor "No." of "Casino." (they were, by substring)."""
    documents = ["I closed my eyes.", "Yes.", "Casino night.", "No.", "My eyes.", "Eyes closed."]
    logits = dict(zip(documents, [5, 4, 3, 2, 1, 0], strict=True))
    selector = ContextSelector(Stub(logits), granularity="passage", min_probability=0, duplicate_cosine=None)
    context = selector.select("q", documents, 1000)
    assert [s.text for s in context.snippets] == ["I closed my eyes.", "Yes.", "Casino night.", "No.", "Eyes closed."]
    assert [(d.passage_id, d.reason, d.detail) for d in context.dropped] == [("4", "duplicate", "same as 0")]


# ---- prompt order -----------------------------------------------------------------------------------------------


def test_orders_score_document_and_ends():
    middle = "Doc zero has a middle sentence far too long to fit in what the budget leaves, so it is left out."
    documents = [f"Doc zero first. {middle} Doc zero last.", "Doc one.", "Doc two.", "Doc three."]
    logits = {documents[0]: 1, "Doc zero first.": 1, middle: -5, "Doc zero last.": 3,
              "Doc one.": 4, "Doc two.": 2, "Doc three.": 0}

    def select(order: str) -> list[str]:
        selector = ContextSelector(Stub(logits), granularity="sentence", min_probability=0, sentence_weight=1.0,
                                   duplicate_cosine=None, order=order)
        context = selector.select("q", documents, 90)
        assert [(d.reason, documents[0][d.start:d.end]) for d in context.dropped] == [("budget", middle)]
        return [s.text for s in context.snippets]

    assert select("score") == ["Doc one.", "Doc zero last.", "Doc two.", "Doc zero first.", "Doc three."]
    # each source's snippets together in reading order: input position, then offset
    assert select("document") == ["Doc zero first.", "Doc zero last.", "Doc one.", "Doc two.", "Doc three."]
    # best first, second best last, the weakest in the middle
    assert select("ends") == ["Doc one.", "Doc two.", "Doc three.", "Doc zero first.", "Doc zero last."]


# ---- bad input --------------------------------------------------------------------------------------------------


def test_bad_budgets_queries_and_sources_are_clear_errors():
    selector = ContextSelector(Stub({}), min_probability=0, duplicate_cosine=None)
    for budget, error in ((0, ValueError), (-1, ValueError), (10**9, ValueError), (True, TypeError),
                          (2.5, TypeError), ("100", TypeError), (None, TypeError)):
        with pytest.raises(error, match="budget_tokens"):
            selector.select("q", DOCS, budget)
    for query in ("", "   \n"):
        with pytest.raises(ValueError, match="query is empty"):
            selector.select(query, DOCS, 100)
    with pytest.raises(TypeError, match="query must be a string"):
        selector.select(None, DOCS, 100)
    for source in ("just a string", b"bytes", {"text": "a mapping"}, 42):
        with pytest.raises(TypeError, match="source must be an Index, a SearchResult or a list"):
            selector.select("q", source, 100)
    with pytest.raises(ValueError, match="filters apply to an index"):
        selector.select("q", DOCS, 100, filters={"lang": "en"})
    with pytest.raises(TypeError, match="document 1"):
        selector.select("q", ["fine", 3], 100)


def test_bad_settings_and_tokenizers_are_clear_errors(tmp_path: Path):
    for settings_, message in (({"granularity": "word"}, "granularity"), ({"order": "random"}, "order"),
                               ({"min_probability": 1.5}, "min_probability"), ({"sentence_weight": -0.1}, "weight"),
                               ({"mmr_lambda": True}, "mmr_lambda"), ({"duplicate_cosine": 0}, "duplicate_cosine"),
                               ({"neighbours": -1}, "neighbours"), ({"neighbours": True}, "neighbours"),
                               ({"candidates": 0}, "candidates")):
        with pytest.raises(ValueError, match=message):
            ContextSelector(Stub({}), **settings_)
    missing = tmp_path / "no-such-tokenizer.json"
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer.json"):
        ContextSelector(Stub({}), tokenizer=missing)
    with pytest.raises(FileNotFoundError, match="empty-folder"):
        ContextSelector(Stub({}), tokenizer=(tmp_path / "empty-folder").mkdir() or tmp_path / "empty-folder")
    corrupt = tmp_path / "tokenizer.json"
    corrupt.write_text('{"model": "not a tokenizer"')
    with pytest.raises(ValueError, match="is not a tokenizer.json"):
        ContextSelector(Stub({}), tokenizer=corrupt)
    with pytest.raises(ValueError, match="is not a tokenizer.json"):
        ContextSelector(Stub({}), tokenizer=tmp_path)  # a folder holding the corrupt file
    with pytest.raises(TypeError, match="tokenizer must be"):
        ContextSelector(Stub({}), tokenizer=42)


def folder_state(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")
            if p.is_file()}


def test_an_empty_index_is_refused_and_left_as_it_was(tmp_path: Path, tiny_index_config):
    from crossrank.store import Index

    path = tmp_path / "index"
    Index.create(path, tiny_index_config).close()
    before = folder_state(path)
    with Index.open(path) as index, pytest.raises(ValueError, match=f"the index at {path} holds no documents"):
        ContextSelector(Stub({}), min_probability=0, duplicate_cosine=None).select("q", index, 100)
    assert folder_state(path) == before


# ---- an index as the source -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory, tiny_index_config):
    from crossrank.store import Index
    from crossrank.types import Document

    index = Index.create(tmp_path_factory.mktemp("context-index") / "index", tiny_index_config)
    long = " ".join(f"Volcano sentence {i} mentions lava flow number {i}." for i in range(30))
    index.add([Document(long, title="Volcanoes <&>", id="v", metadata={"lang": "en"}),
               Document("Glaciers move slowly and carve valleys.", title="Glaciers", id="g", metadata={"lang": "en"}),
               Document("Lava cools into basalt rock. Basalt is dark.", title="Basalt", id="b",
                        metadata={"lang": "de"})])
    index.commit()
    yield index
    index.close()


def test_an_index_source_carries_passage_and_doc_ids_and_applies_filters(tiny, small_index):
    passages = {p.id: p for doc in ("v", "g", "b") for p in small_index.passages(doc)}
    assert len(passages) > 3  # the long document is several passages
    for granularity in ("passage", "sentence"):
        selector = ContextSelector(tiny, granularity=granularity, min_probability=0, duplicate_cosine=None)
        context = selector.select("lava basalt", small_index, 400)
        assert context.snippets and context.tokens <= 400
        for snippet in context.snippets:
            passage = passages[snippet.passage_id]
            assert snippet.doc_id == passage.doc_id and snippet.title == passage.title
            assert snippet.text == passage.text[snippet.start:snippet.end]
            assert snippet.metadata["lang"] == passage.metadata["lang"]
        traced = {s.passage_id for s in context.snippets} | {d.passage_id for d in context.dropped}
        assert traced == set(passages)  # candidates=50 reaches every passage: each quoted or traced

        german = selector.select("lava basalt", small_index, 400, filters={"lang": "de"})
        assert {s.doc_id for s in german.snippets} == {"b"}
        assert {d.doc_id for d in german.dropped} <= {"b"}
        nothing = selector.select("lava", small_index, 400, filters={"lang": "fr"})
        assert nothing.abstained and "no candidates" in nothing.reason
    with pytest.raises(ValueError, match="unknown filter field"):
        selector.select("lava", small_index, 400, filters={"colour": "red"})
    first_stage = ContextSelector(None, abstain_below=0, min_probability=0, duplicate_cosine=None,
                                  granularity="passage")
    context = first_stage.select("lava basalt", small_index, 400)
    assert context.snippets and all(s.doc_id in ("v", "g", "b") for s in context.snippets)


# ---- rendering, citations and the dict --------------------------------------------------------------------------


def parsed_sources(rendered: str) -> list[tuple[str, str, str | None, str]]:
    """The xml style read back by an XML parser: (id, doc, title, text) of each <source>."""
    from xml.etree import ElementTree

    root = ElementTree.fromstring(f"<context>{rendered}</context>")
    return [(e.get("id"), e.get("doc"), e.get("title"), e.text or "") for e in root]


def test_render_styles_escape_and_cite(tiny):
    documents = [{"text": "Use <script>alert('x')</script> & friends.", "title": 'The "quoted" <title>', "id": "d1",
                  "url": "https://example.org"},
                 {"text": "Plain text here.", "id": "d2"}]
    selector = ContextSelector(tiny, granularity="passage", min_probability=0, duplicate_cosine=None,
                               order="document")
    context = selector.select("what is escaped?", documents, 500)
    assert [s.doc_id for s in context.snippets] == ["d1", "d2"]
    xml = context.render("xml")
    assert "<script>" not in xml and "&lt;script&gt;alert('x')&lt;/script&gt; &amp; friends." in xml
    assert "title='The \"quoted\" &lt;title&gt;'" in xml and 'doc="d1"' in xml
    assert xml.endswith('\n\n<source id="2" doc="d2">Plain text here.</source>')
    assert parsed_sources(xml) == [("1", "d1", documents[0]["title"], documents[0]["text"]),
                                   ("2", "d2", None, "Plain text here.")]
    quotes = selector.select("q", [{"text": "x", "title": "both \" and ' quotes"}], 100).render("xml")
    assert parsed_sources(quotes) == [("1", "0", "both \" and ' quotes", "x")]
    assert context.render("numbered") == ("[1] The \"quoted\" <title>: Use <script>alert('x')</script> & friends."
                                          "\n\n[2] Plain text here.")
    assert context.render("markdown").startswith("**[1] The \"quoted\" <title>**\nUse <script>")
    assert context.render() == context.render("numbered")
    with pytest.raises(ValueError, match="style must be one of"):
        context.render("html")
    assert context.citations == {
        "[1]": {"doc_id": "d1", "passage_id": "d1", "title": 'The "quoted" <title>', "start": 0,
                "end": len(documents[0]["text"])},
        "[2]": {"doc_id": "d2", "passage_id": "d2", "title": "", "start": 0, "end": 16}}
    data = json.loads(json.dumps(context.to_dict(), allow_nan=False))
    assert data["snippets"][0]["metadata"] == {"url": "https://example.org"} and data["budget"] == 500
    assert data["tokens"] == context.tokens and data["abstained"] is False and len(data["snippets"]) == 2


def test_an_unknown_style_is_refused_even_for_an_empty_context():
    """An abstained context rendered no block, so a misspelt style passed until a context had snippets."""
    context = ContextSelector(Stub({}, default=-10), min_probability=0.5, duplicate_cosine=None).select(
        "q", ["Nothing relevant."], 100)
    assert context.abstained and context.render("xml") == ""
    with pytest.raises(ValueError, match="style must be one of"):
        context.render("html")


def test_select_context_is_one_call(tiny):
    from crossrank.context import select_context

    context = select_context(QUERY, DOCS, 200, model=tiny, duplicate_cosine=None, granularity="passage",
                             min_probability=0)
    assert context.snippets and context.tokens <= 200 and context.granularity == "passage"


def test_to_dict_without_a_model_is_strict_json() -> None:
    from crossrank.context import ContextSelector

    context = ContextSelector(None, abstain_below=0, min_probability=0, duplicate_cosine=None).select(
        "q", ["one sentence here. Another one there.", "a second passage."], 30)
    text = json.dumps(context.to_dict(), allow_nan=False)  # raises on NaN
    assert json.loads(text)["snippets"][0]["probability"] is None
    assert all(d["probability"] is None for d in json.loads(text)["dropped"])
