"""Deterministic embeddings: the same (text, model) gives the same direction everywhere."""

from __future__ import annotations

import hashlib

import numpy as np

DIMENSIONS = 768
MODELS = ("nomic-embed-text", "nomic-embed-text-v2-moe")


def _seed(*parts: str) -> int:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def unit_embedding(text: str, model: str) -> np.ndarray:
    """A unit-L2 vector for `text` under `model`; different models give different spaces."""
    vector = np.random.default_rng(_seed(model, text)).standard_normal(DIMENSIONS)
    return vector / np.linalg.norm(vector)


def raw_magnitude(text: str, model: str) -> float:
    """The norm a raw (Ollama-like) embedding of `text` has: between 20 and 23."""
    return 20.0 + 3.0 * (_seed("magnitude", model, text) % 10_000) / 10_000


def embed_batch(texts: list[str], model: str, *, unit: bool) -> np.ndarray:
    """(len(texts), DIMENSIONS): unit rows (Rust) or raw magnitudes (Go)."""
    rows = [unit_embedding(t, model) * (1.0 if unit else raw_magnitude(t, model)) for t in texts]
    return np.array(rows) if rows else np.zeros((0, DIMENSIONS))
