"""Vector (FAISS IVF) and lexical (BM25) indexes, and rank fusion."""
