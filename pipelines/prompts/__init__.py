"""A1111's prompt syntax (`syntax`) and the chunked, weighted CLIP encoding built on it (`encode`)."""
