"""Deterministic embeddings: the same (text, model) gives the same direction everywhere.

A text's vector is the normalised sum of its lower-cased words' vectors, each drawn from a
generator seeded by (model, word). So texts that share words are close, different models
give different spaces, and an empty text is the zero vector.
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

DIMENSIONS = 768
MODELS = ("nomic-embed-text", "nomic-embed-text-v2-moe")
_WORD = re.compile(r"[a-z0-9]+")


def _seed(*parts: str) -> int:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


@functools.lru_cache(maxsize=65536)
def _word_vector(model: str, word: str) -> np.ndarray:
    vector = np.random.default_rng(_seed(model, word)).standard_normal(DIMENSIONS)
    vector.flags.writeable = False
    return vector


def unit_embedding(text: str, model: str) -> np.ndarray:
    """A unit-L2 vector for `text` under `model` (zero for a text without words)."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(DIMENSIONS)
    vector = np.sum([_word_vector(model, word) for word in words], axis=0)
    unit: np.ndarray = vector / np.linalg.norm(vector)
    return unit


def raw_magnitude(text: str, model: str) -> float:
    """The norm a raw (Ollama-like) embedding of `text` has: between 20 and 23."""
    return 20.0 + 3.0 * (_seed("magnitude", model, text) % 10_000) / 10_000


def embed_batch(texts: list[str], model: str, *, unit: bool) -> np.ndarray:
    """(len(texts), DIMENSIONS): unit rows (Rust) or raw magnitudes (Go)."""
    rows = [unit_embedding(t, model) * (1.0 if unit else raw_magnitude(t, model)) for t in texts]
    return np.array(rows) if rows else np.zeros((0, DIMENSIONS))
