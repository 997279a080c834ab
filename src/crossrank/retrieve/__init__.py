"""First-stage retrievers over an Index (BM25 on tantivy, dense on FAISS) and rank fusion."""
