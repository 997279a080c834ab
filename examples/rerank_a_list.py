"""Rerank a list of documents you already have with the bundled default cross-encoder.

    python examples/rerank_a_list.py
"""

from crossrank import CrossEncoder

query = "how do vaccines protect against disease"
documents = [
    "Antibiotics kill bacteria but have no effect on viruses.",
    {"id": "v1", "title": "Vaccines", "text": "A vaccine trains the immune system with a harmless piece of a pathogen."},
    "The forecast says rain tomorrow.",
    {"id": "h1", "title": "Herd immunity", "text": "When most people are immune, a disease cannot spread easily."},
]

model = CrossEncoder.from_pretrained()  # the bundled model; quantize="int8" for about twice the speed
for hit in model.rank(query, documents, top_k=3):
    text = hit.document if isinstance(hit.document, str) else hit.document["text"]
    print(f"{hit.score:8.3f}  p={hit.probability:.3f}  {text}")
