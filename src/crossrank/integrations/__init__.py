"""Adapters for RAG frameworks, each an optional extra imported only when asked for:

    from crossrank.integrations.langchain import CrossrankContextCompressor       # pip install 'crossrank[langchain]'
    from crossrank.integrations.llamaindex import CrossrankContextPostprocessor   # pip install 'crossrank[llamaindex]'

Both run a `crossrank.context.ContextSelector` in-process on the documents (nodes) a retriever found and hand back
the selected snippets, each an exact span of one input, in context order, within a token budget.
"""
