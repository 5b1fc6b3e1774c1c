"""The 64-bit boundary of a client's integers: bodies the 19-digit pre-check lets go at once
and bodies it hands to the full scan. The smallest integer out of range has 19 digits
(-(2**63) - 1): a pre-check asking for 20 would let it through, and this test would fail."""

from __future__ import annotations

import pytest

from shim.serving.safe_json import huge_integer


@pytest.mark.parametrize(
    ("body", "huge"),
    [
        (b'{"n": 18446744073709551615}', None),  # 2**64 - 1: orjson keeps it exactly
        (b'{"n": 18446744073709551616}', "18446744073709551616"),  # 2**64
        (b'{"n": -9223372036854775808}', None),  # -(2**63)
        (b'{"n": -9223372036854775809}', "-9223372036854775809"),  # 19 digits, out of range
        (b'{"n": 1234567890123456789}', None),  # 19 digits, in range
        (b'{"s": "123456789012345678901234567890"}', None),  # in a string: not a number
        (b'{"x": 123456789012345678901234.5}', None),  # a float, not an integer
        (b'{"texts": ["forklift operator 0"], "model": "m"}', None),  # no long digit run
        (b"[1, 2, 123456789012345678901234567890]", "123456789012345678901234567890"),
    ],
)
def test_an_integer_beyond_64_bits_is_found_and_only_such_a_one(
    body: bytes, huge: str | None
) -> None:
    assert huge_integer(body) == huge
