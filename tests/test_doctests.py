"""Every docstring example in the product runs: the adapters' (issue 14), the wire and
drift modules', the vocabulary's. A module gains examples and this test finds them."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules_with_examples() -> list[str]:
    found = []
    for folder in ("adapters", "shim", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if ">>> " in path.read_text() and path.name != "__main__.py":
                parts = path.relative_to(ROOT).with_suffix("").parts
                found.append(".".join(parts))
    return found


def test_the_adapters_have_examples() -> None:
    assert {"adapters.embed", "adapters.vectors", "adapters.declared"} <= set(
        modules_with_examples()
    )


@pytest.mark.parametrize("name", modules_with_examples())
def test_the_docstring_examples_hold(name: str) -> None:
    failed, tried = doctest.testmod(importlib.import_module(name))
    assert tried > 0 and failed == 0
