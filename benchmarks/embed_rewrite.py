"""Micro-benchmark of the embed answer rewrite alone, old way against new, in one process.

    .venv/bin/python benchmarks/embed_rewrite.py [--texts 1,8,64,256] [--dim 768]

Per batch size and direction: microseconds per answer and per vector for the old path
(`orjson.loads` -> adapter -> `orjson.dumps`) and the new one
(`shim.serving.vector_wire`), on answers written the way the gateways write them (float32
shortest text). Only ratios within one run
mean anything on a loaded machine.
"""

from __future__ import annotations

import argparse
import functools
import timeit

import numpy as np
import orjson

from adapters.embed import EMBED, EmbedOptions
from shim.serving.vector_wire import embed_answer

OPTIONS = EmbedOptions(default_model={"rust": "r", "go": "g"})


def answers(texts: int, dim: int) -> dict[str, tuple[bytes, str, str]]:
    rng = np.random.default_rng(texts)
    raw = (rng.standard_normal((texts, dim)) * 0.8).astype(np.float32)
    unit = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    go = {"vectors": raw, "dimension": dim, "model": "nomic-embed-text"}
    rust = {"embeddings": unit, "dimensions": dim, "model": "nomic-embed-text"}
    dump = orjson.OPT_SERIALIZE_NUMPY
    return {
        "normalising (go -> rust face)": (orjson.dumps(go, option=dump), "rust", "go"),
        "rename-only (rust -> go face)": (orjson.dumps(rust, option=dump), "go", "rust"),
    }


def old(raw: bytes, client: str, backend: str) -> bytes:
    result = EMBED.translate_response(
        orjson.loads(raw), client=client, backend=backend, options=OPTIONS
    )
    return orjson.dumps(result.body, option=orjson.OPT_SERIALIZE_NUMPY)


def new(raw: bytes, client: str, backend: str) -> bytes:
    body, _ = embed_answer(
        EMBED, raw, client=client, backend=backend, options=OPTIONS, slow=orjson.loads
    )
    return body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", default="1,8,64,256")
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    print(
        f"{'texts':>5} {'direction':<30} {'KB':>6} {'old us':>8} {'new us':>8} "
        f"{'new/old':>7} {'new us/vec':>10}"
    )
    for texts in (int(t) for t in args.texts.split(",")):
        for direction, (raw, client, backend) in answers(texts, args.dim).items():
            number = max(3, 20000 // texts)
            times = {}
            for name, way in (("old", old), ("new", new)):
                call = functools.partial(way, raw, client, backend)
                runs = timeit.repeat(call, number=number, repeat=5)
                times[name] = min(runs) / number * 1e6
            print(
                f"{texts:>5} {direction:<30} {len(raw) / 1024:>6.0f} {times['old']:>8.1f} "
                f"{times['new']:>8.1f} {times['new'] / times['old']:>7.2f} "
                f"{times['new'] / texts:>10.2f}"
            )


if __name__ == "__main__":
    main()
