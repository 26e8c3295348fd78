"""Caches that make repeated work free: memoized prompt and face embeddings, exact latent repeats."""
