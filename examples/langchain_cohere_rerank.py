"""LangChain's Cohere reranker, pointed at `crossrank serve` by base URL: rerank retrieved Documents remotely.

    python examples/langchain_cohere_rerank.py

With langchain-cohere installed, the reranker is its own `CohereRerank` with a `cohere.ClientV2` whose base URL is
the server (langchain-cohere 0.6 calls the v2 rerank endpoint, which crossrank serves). langchain-cohere pins
cohere<6, so beside cohere 6 or later (crossrank's dev environment) the same call is made by the few lines of
`ServedRerank` below, with cohere and langchain-core only. Either way the result is the one LangChain reranker
contract: the top documents, best first, with `relevance_score` in their metadata.
"""

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import cohere
import httpx
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document


class ServedRerank(BaseDocumentCompressor):
    """What `langchain_cohere.CohereRerank.compress_documents` does, for any cohere client (v2 rerank API)."""

    client: Any
    model: str = "crossrank"
    top_n: int | None = 3

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        if not documents:
            return []
        response = self.client.rerank(model=self.model, query=query, top_n=self.top_n,
                                      documents=[document.page_content for document in documents])
        return [Document(documents[result.index].page_content,
                         metadata={**documents[result.index].metadata, "relevance_score": result.relevance_score})
                for result in response.results]


def served_reranker(base_url: str, api_key: str, top_n: int = 3) -> BaseDocumentCompressor:
    """A LangChain document compressor that reranks with the crossrank server at `base_url`."""
    client = cohere.ClientV2(api_key=api_key, base_url=base_url)
    try:
        from langchain_cohere import CohereRerank
    except ImportError:
        return ServedRerank(client=client, top_n=top_n)
    return CohereRerank(client=client, model="crossrank", top_n=top_n)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    port = free_port()
    server = subprocess.Popen(["crossrank", "serve", "--port", str(port)],
                              env={**os.environ, "CROSSRANK_API_KEYS": "key1"})
    try:
        for _ in range(240):  # ready once the model is loaded (the first start exports it to ONNX once)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the server did not start")
        reranker = served_reranker(f"http://127.0.0.1:{port}", api_key="key1", top_n=1)
        retrieved = [Document("Berlin is the capital of Germany.", metadata={"source": "berlin.md"}),
                     Document("Paris is the capital and largest city of France.", metadata={"source": "paris.md"})]
        best = reranker.compress_documents(retrieved, "capital of France")[0]
        print(f"best: {best.metadata['source']}, relevance {best.metadata['relevance_score']:.3f} "
              f"({type(reranker).__name__})")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
