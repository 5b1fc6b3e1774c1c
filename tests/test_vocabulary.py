"""The flat vocabulary modules: three-state outcomes (their docstring examples, and those of
timestamps and percentiles, run in tests/test_doctests.py)."""

from __future__ import annotations

import json
import logging

import numpy as np
import orjson
import pytest

from shim import stats, timestamps
from shim.types import Outcome


def test_an_outcome_is_written_as_the_plain_string_it_replaced() -> None:
    record = {"verdict": Outcome.PASS, "guard": Outcome.INCONCLUSIVE}
    assert orjson.dumps(record) == b'{"verdict":"PASS","guard":"INCONCLUSIVE"}'
    assert json.dumps(record) == '{"verdict": "PASS", "guard": "INCONCLUSIVE"}'
    assert f"{Outcome.FAIL} {Outcome.FAIL!s}" == "FAIL FAIL"
    assert logging.Formatter().format(logging.makeLogRecord({"msg": Outcome.FAIL})) == "FAIL"
    assert Outcome("PASS") is Outcome.PASS and {"PASS": 1}[Outcome.PASS] == 1


def test_percentiles_are_numpys_default_for_lists_and_arrays() -> None:
    values = [0.3, 0.1, 0.9, 0.5]
    points = (0, 1, 50, 99, 100)
    expected = [float(np.percentile(values, p)) for p in points]
    assert stats.percentiles(values, points) == pytest.approx(expected)
    assert stats.percentiles(np.array(values), points) == pytest.approx(expected)


def test_timestamps_are_utc_with_a_z() -> None:
    assert timestamps.iso_utc(86_400.25) == "1970-01-02T00:00:00.250Z"
    assert timestamps.iso_utc(86_400.25, timespec="seconds") == "1970-01-02T00:00:00Z"
    assert timestamps.iso_utc().endswith("Z")
