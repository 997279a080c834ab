"""HTTP serving: a Cohere/Jina-compatible rerank service with cross-request micro-batching, limits, auth and
metrics; the same app runs under uvicorn or Ray Serve, and Ray Data scores offline files with the same model."""
