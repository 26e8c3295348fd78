"""A1111's prompt syntax (`syntax`), the chunked, weighted CLIP encoding built on it (`encode`) and
textual-inversion embeddings (`embeddings`)."""
