"""Face reference (PuLID): detection and alignment, face parsing, EVA-CLIP, ID encoders, weights."""
