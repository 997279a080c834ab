"""The LangChain compressor and the LlamaIndex postprocessor against the real packages (the `langchain` and
`llamaindex` extras; the dev extra installs both, so they are imported here as plainly as cohere is elsewhere), and
LangChain's Cohere reranker pointed at a live server."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LiveServer
from langchain_core.documents import Document as LangchainDocument
from llama_index.core import schema as llama_schema
from llama_index.core.schema import NodeWithScore, TextNode

from crossrank.context import STYLES
from crossrank.integrations.langchain import CrossrankContextCompressor
from crossrank.integrations.llamaindex import CrossrankContextPostprocessor
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.types import Document as CrossrankDocument

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUERY = "capital of France"
TEXTS = [("Paris is the capital and largest city of France. It lies on the Seine. The Louvre is there. "
          "Millions of tourists visit every year."),
         "Berlin is the capital of Germany. It is known for its museums. The wall fell in 1989.",
         "France is a country in western Europe. Its capital is Paris. Its currency is the euro.",
         "Cats are small domesticated carnivores. They sleep most of the day.",
         "Paris is the capital and largest city of France."]  # a repeat of the first sentence of TEXTS[0]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir)


def settings(tiny, **overrides):
    """No floor and no bi-encoder: the tiny random model's probabilities are about 0.5 for everything."""
    return {"model": tiny, "min_probability": 0, "duplicate_cosine": None, **overrides}


def lc_documents() -> list:
    # ids repeat and go missing, as they do in the wild: the adapter maps back by position, not by id
    ids = ["a", "a", None, "d", None]
    return [LangchainDocument(page_content=text, id=doc_id, metadata={"source": f"file{n}.md", "n": n})
            for n, (text, doc_id) in enumerate(zip(TEXTS, ids, strict=True))]


def ll_nodes() -> list:
    return [NodeWithScore(node=TextNode(id_=f"node-{n}", text=text, metadata={"source": f"file{n}.md"},
                                        start_char_idx=1000 * n, end_char_idx=1000 * n + len(text)), score=0.1 * n)
            for n, text in enumerate(TEXTS)]


# ---- LangChain --------------------------------------------------------------------------------------------------


def test_compressor_returns_exact_spans_mapped_to_their_sources(tiny):
    documents = lc_documents()
    compressor = CrossrankContextCompressor(budget_tokens=400, **settings(tiny))
    out = compressor.compress_documents(documents, QUERY)
    context = compressor.select_context(documents, QUERY)
    assert out and len(out) == len(context.snippets)
    for document, snippet in zip(out, context.snippets, strict=True):  # in context order
        meta = document.metadata
        source = documents[meta["crossrank_source_index"]]
        assert document.page_content == source.page_content[meta["crossrank_start"]:meta["crossrank_end"]]
        assert document.page_content == snippet.text and meta["crossrank_marker"] == snippet.marker
        assert meta["source"] == source.metadata["source"] and meta["n"] == source.metadata["n"]
        assert meta["crossrank_source_id"] == source.id
        assert meta["crossrank_score"] == snippet.score
        assert meta["relevance_score"] == meta["crossrank_probability"] == pytest.approx(snippet.probability)
        assert 0 <= meta["crossrank_passage_probability"] <= 1
    assert [d.metadata["crossrank_marker"] for d in out] == list(range(1, len(out) + 1))
    assert all("crossrank_marker" not in d.metadata for d in documents)  # the inputs are left as they were
    # the repeated sentence appears once, from whichever copy was kept
    assert sum(d.page_content.startswith("Paris is the capital and largest") for d in out) == 1


@pytest.fixture(scope="module")
def wordpiece(tiny_model_dir):
    """A real tokenizer for the budget, passed as an object: the model's, with the padding and truncation at 128
    its tokenizer.json ships turned off (how the counter treats those is not what these tests are about)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


@pytest.mark.parametrize("granularity", ["sentence", "passage"])
@pytest.mark.parametrize("tokenizer", [None, "wordpiece"])
def test_compressor_keeps_to_the_budget_in_the_selectors_count(tiny, wordpiece, granularity, tokenizer):
    tokenizer = wordpiece if tokenizer == "wordpiece" else None
    for budget in (12, 25, 40, 70, 120, 1000):
        compressor = CrossrankContextCompressor(budget_tokens=budget, granularity=granularity,
                                                tokenizer=tokenizer, **settings(tiny))
        counter = compressor.selector.counter
        out = compressor.compress_documents(lc_documents(), QUERY)
        context = compressor.select_context(lc_documents(), QUERY)
        texts = [d.page_content for d in out]
        assert texts == [s.text for s in context.snippets]
        assert sum(counter.count(texts)) <= budget and counter.count(["\n\n".join(texts)])[0] <= budget
        assert all(counter.count([context.render(style)])[0] <= budget for style in STYLES)
        if budget == 1000:
            assert len(out) >= 4  # a generous budget takes (nearly) everything
    assert len(CrossrankContextCompressor(budget_tokens=25, granularity=granularity, tokenizer=tokenizer,
                                          **settings(tiny)).compress_documents(lc_documents(), QUERY)) >= 1


def test_compressor_abstains_below_the_floor(tiny, caplog):
    compressor = CrossrankContextCompressor(budget_tokens=400, **settings(tiny, min_probability=1.0))
    with caplog.at_level("INFO", logger="crossrank.integrations"):
        assert compressor.compress_documents(lc_documents(), QUERY) == []
    assert "relevance floor" in caplog.text
    context = compressor.select_context(lc_documents(), QUERY)
    assert context.abstained and "min_probability 1.0" in context.reason
    assert compressor.compress_documents([], QUERY) == []  # nothing retrieved: nothing to select


def test_compressor_rejects_bad_settings_and_inputs(tiny):
    for budget in (0, -5, 2_000_000):
        with pytest.raises(ValueError, match="budget_tokens must be between 1 and"):
            CrossrankContextCompressor(budget_tokens=budget, **settings(tiny))
    with pytest.raises(ValueError, match="granularity"):
        CrossrankContextCompressor(budget_tokens=100, **settings(tiny, granularity="word"))
    with pytest.raises(ValueError, match="abstention needs a cross-encoder"):
        CrossrankContextCompressor(budget_tokens=100, model=None)
    with pytest.raises(ValueError, match="budget_top"):
        CrossrankContextCompressor(budget_top=100, **settings(tiny))  # a misspelt field is refused, not ignored
    compressor = CrossrankContextCompressor(budget_tokens=100, **settings(tiny))
    compressor.budget_tokens = 0  # assignment is not validated by pydantic here; the call checks again
    with pytest.raises(ValueError, match="budget_tokens must be between 1 and"):
        compressor.compress_documents(lc_documents(), QUERY)
    compressor.budget_tokens = 100
    with pytest.raises(ValueError, match="query is empty"):
        compressor.compress_documents(lc_documents(), "  ")
    with pytest.raises(TypeError, match=r"documents\[1\] is a str"):
        compressor.compress_documents([lc_documents()[0], "plain text"], QUERY)


def test_compressor_settings_follow_the_fields_and_keep_the_loaded_model(tiny):
    compressor = CrossrankContextCompressor(budget_tokens=400, **settings(tiny))
    first = compressor.selector
    assert compressor.selector is first  # not rebuilt per call
    compressor.order, compressor.granularity = "document", "passage"
    assert compressor.selector is not first and compressor.selector.model is tiny
    out = compressor.compress_documents(lc_documents(), QUERY)
    positions = [d.metadata["crossrank_source_index"] for d in out]
    assert positions == sorted(positions)  # document order
    assert all(d.page_content == TEXTS[p] for d, p in zip(out, positions, strict=True))  # whole passages
    assert compressor.model_dump()["order"] == "document" and "model" not in compressor.model_dump()


def test_a_rebuilt_selector_keeps_the_models_it_loaded(tiny, monkeypatch):
    """model="default" and encoder=None load the bundled models once, however often the settings change."""
    import numpy as np

    from crossrank.model.cross_encoder import CrossEncoder as CrossEncoderClass
    from crossrank.model.embedding import BiEncoder

    class Encoder:
        def encode(self, texts):
            vectors = np.random.default_rng(len(texts)).normal(size=(len(texts), 8)).astype(np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    loads = []
    monkeypatch.setattr(CrossEncoderClass, "from_pretrained", lambda *a, **k: loads.append("ce") or tiny)
    monkeypatch.setattr(BiEncoder, "from_pretrained", lambda *a, **k: loads.append("bi") or Encoder())
    compressor = CrossrankContextCompressor(budget_tokens=400, min_probability=0)  # duplicate_cosine: the default
    assert loads == ["ce"]
    for order in ("document", "ends", "score"):
        compressor.order = order
        assert compressor.compress_documents(lc_documents(), QUERY)
    assert loads == ["ce", "bi"] and compressor.model == "default"


def test_compressor_titles_reach_the_cross_encoder(tiny):
    document = LangchainDocument(page_content=TEXTS[2], metadata={"title": "France"})
    with_title = CrossrankContextCompressor(budget_tokens=400, **settings(tiny, granularity="passage"))
    without = CrossrankContextCompressor(budget_tokens=400, **settings(tiny, granularity="passage", title_key=None))
    scored = tiny.score([QUERY, QUERY], [CrossrankDocument(TEXTS[2], title="France"), CrossrankDocument(TEXTS[2])])
    assert with_title.compress_documents([document], QUERY)[0].metadata["crossrank_score"] == pytest.approx(
        float(scored.logits[0]), abs=1e-5)
    assert without.compress_documents([document], QUERY)[0].metadata["crossrank_score"] == pytest.approx(
        float(scored.logits[1]), abs=1e-5)


def test_compressor_async_matches_sync(tiny):
    compressor = CrossrankContextCompressor(budget_tokens=60, **settings(tiny))
    documents = lc_documents()
    assert asyncio.run(compressor.acompress_documents(documents, QUERY)) == compressor.compress_documents(
        documents, QUERY)


# ---- LlamaIndex -------------------------------------------------------------------------------------------------


def test_postprocessor_returns_exact_spans_mapped_to_their_sources(tiny):
    nodes = ll_nodes()
    nodes[2].node.relationships[llama_schema.NodeRelationship.SOURCE] = llama_schema.RelatedNodeInfo(node_id="doc-7")
    postprocessor = CrossrankContextPostprocessor(budget_tokens=400, **settings(tiny))
    out = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    context = postprocessor.select_context(nodes, QUERY)
    assert out and [n.node.text for n in out] == [s.text for s in context.snippets]
    for result, snippet in zip(out, context.snippets, strict=True):
        node, meta = result.node, result.node.metadata
        position = meta["crossrank_source_index"]
        source = nodes[position].node
        start, end = meta["crossrank_start"], meta["crossrank_end"]
        assert node.text == source.text[start:end] and meta["crossrank_source_id"] == source.node_id
        assert node.node_id == f"{source.node_id}:{start}-{end}" and meta["source"] == source.metadata["source"]
        assert (node.start_char_idx, node.end_char_idx) == (1000 * position + start, 1000 * position + end)
        assert result.score == pytest.approx(snippet.probability) == meta["crossrank_probability"]
        assert node.ref_doc_id == ("doc-7" if position == 2 else None)  # relationships travel with the snippet
        llm_text = node.get_content(metadata_mode=llama_schema.MetadataMode.LLM)
        assert "source: file" in llm_text and "crossrank" not in llm_text  # our fields stay out of the prompt
    assert all("crossrank_marker" not in n.node.metadata for n in nodes)


@pytest.mark.parametrize("granularity", ["sentence", "passage"])
def test_postprocessor_keeps_to_the_budget_in_the_selectors_count(tiny, granularity):
    for budget in (12, 25, 40, 70, 120, 1000):
        postprocessor = CrossrankContextPostprocessor(budget_tokens=budget, granularity=granularity,
                                                      **settings(tiny))
        counter = postprocessor.selector.counter
        texts = [n.node.text for n in postprocessor.postprocess_nodes(ll_nodes(), query_str=QUERY)]
        assert sum(counter.count(texts)) <= budget and counter.count(["\n\n".join(texts)])[0] <= budget


def test_postprocessor_abstains_and_rejects_bad_input(tiny):
    postprocessor = CrossrankContextPostprocessor(budget_tokens=400, **settings(tiny, min_probability=1.0))
    assert postprocessor.postprocess_nodes(ll_nodes(), query_str=QUERY) == []
    assert postprocessor.select_context(ll_nodes(), QUERY).abstained
    with pytest.raises(ValueError, match="budget_tokens must be between 1 and"):
        CrossrankContextPostprocessor(budget_tokens=0, **settings(tiny))
    postprocessor = CrossrankContextPostprocessor(budget_tokens=400, **settings(tiny))
    with pytest.raises(ValueError, match="needs the query"):
        postprocessor.postprocess_nodes(ll_nodes())
    with pytest.raises(TypeError, match=r"nodes\[0\] is a TextNode"):
        postprocessor.postprocess_nodes([n.node for n in ll_nodes()], query_str=QUERY)


def test_postprocessor_async_and_serialisation(tiny):
    postprocessor = CrossrankContextPostprocessor(budget_tokens=60, **settings(tiny))
    sync = postprocessor.postprocess_nodes(ll_nodes(), query_str=QUERY)
    asynchronous = asyncio.run(postprocessor.apostprocess_nodes(ll_nodes(), query_str=QUERY))
    assert [(n.node.node_id, n.score) for n in asynchronous] == [(n.node.node_id, n.score) for n in sync]
    data = postprocessor.to_dict()
    assert data["class_name"] == "CrossrankContextPostprocessor" and data["budget_tokens"] == 60
    assert "model" not in data  # models are not serialised


# ---- packaging ----------------------------------------------------------------------------------------------------


def test_integrations_package_imports_no_framework():
    code = ("import sys, crossrank.integrations; "
            "assert not any(m.split('.')[0] in ('langchain_core', 'llama_index') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(("module", "blocked", "extra"), [
    ("crossrank.integrations.langchain", "langchain_core.documents", "langchain"),
    ("crossrank.integrations.llamaindex", "llama_index.core.postprocessor.types", "llamaindex")])
def test_a_missing_extra_names_the_install_command(monkeypatch, module, blocked, extra):
    monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, blocked, None)  # `import` of a None entry raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'crossrank\[{extra}\]'"):
        importlib.import_module(module)


# ---- LangChain's Cohere reranker against `crossrank serve` ------------------------------------------------------


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_langchain_cohere_rerank_recipe_against_a_live_server(tiny_model_dir, tiny, tmp_path):
    from crossrank.server.app import create_app
    from crossrank.server.config import ServerConfig

    recipe = load_example("langchain_cohere_rerank")
    config = ServerConfig(model=str(tiny_model_dir), api_keys=frozenset({"key1"}), index_root=tmp_path)
    documents = lc_documents()
    with LiveServer(create_app(config)) as url:
        reranker = recipe.served_reranker(url, api_key="key1", top_n=3)
        out = reranker.compress_documents(documents, QUERY)
        assert reranker.compress_documents([], QUERY) == []
    expected = tiny.rank(QUERY, TEXTS, top_k=3)
    assert [d.page_content for d in out] == [TEXTS[r.index] for r in expected]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([r.probability for r in expected], abs=1e-5)
    assert [d.metadata["source"] for d in out] == [f"file{r.index}.md" for r in expected]
