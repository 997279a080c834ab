"""Context selection for an LLM: the budget is never exceeded, nothing is lost without a trace, and the floor,
granularity, dedup, order, citations and bad input behave as documented."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import minilm_path
from tokenizers import Tokenizer

from crossrank.context import STYLES, ContextSelector, token_counter
from crossrank.model.cross_encoder import CrossEncoder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> CrossEncoder:
    """The random 2-layer cross-encoder (torch: it loads in a fraction of the ONNX export's time)."""
    return CrossEncoder.from_pretrained(tiny_model_dir, backend="torch")


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
        ContextSelector(None, Encoder("cat"), min_probability=0, mmr_lambda=0.5)
    documents = ["cat one.", "cat two.", "dog three."]
    logits = {"cat one.": 3, "cat two.": 2, "dog three.": 1}
    selector = ContextSelector(Stub(logits), Encoder("cat"), granularity="passage", min_probability=0,
                               duplicate_cosine=None, mmr_lambda=0.5)
    context = selector.select("q", documents, 35)  # room for two of the three (xml blocks of 14-15 tokens)
    assert [s.text for s in context.snippets] == ["cat one.", "dog three."]  # the novel one beats "cat two."


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
    first_stage = ContextSelector(None, min_probability=0, duplicate_cosine=None, granularity="passage")
    context = first_stage.select("lava basalt", small_index, 400)
    assert context.snippets and all(s.doc_id in ("v", "g", "b") for s in context.snippets)


def test_containment_is_by_whole_words_not_any_substring():
    """"Yes." is not a duplicate of "I closed my eyes.", nor "No." of "Casino." (they were, by substring)."""
    documents = ["I closed my eyes.", "Yes.", "Casino night.", "No.", "My eyes.", "Eyes closed."]
    logits = dict(zip(documents, [5, 4, 3, 2, 1, 0], strict=True))
    selector = ContextSelector(Stub(logits), granularity="passage", min_probability=0, duplicate_cosine=None)
    context = selector.select("q", documents, 1000)
    assert [s.text for s in context.snippets] == ["I closed my eyes.", "Yes.", "Casino night.", "No.", "Eyes closed."]
    assert [(d.passage_id, d.reason, d.detail) for d in context.dropped] == [("4", "duplicate", "same as 0")]


def test_an_unknown_style_is_refused_even_for_an_empty_context():
    """An abstained context rendered no block, so a misspelt style passed until a context had snippets."""
    context = ContextSelector(Stub({}, default=-10), min_probability=0.5, duplicate_cosine=None).select(
        "q", ["Nothing relevant."], 100)
    assert context.abstained and context.render("xml") == ""
    with pytest.raises(ValueError, match="style must be one of"):
        context.render("html")
