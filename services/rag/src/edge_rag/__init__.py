"""Local RAG: embed on the board, store in Qdrant, answer with citations."""
