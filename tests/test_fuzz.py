"""schemathesis against the running server's own /openapi.json (short: benchmarks/fuzz.py).

Every operation, generated valid and invalid requests, with and without an API key, and
stateful sequences along the schema's links: no 500, no answer outside its documented
status codes, content type, headers and schema, no undocumented operation.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fuzz import fuzz  # noqa: E402


def test_fuzzing_finds_nothing():
    with_key, without_key = fuzz(
        max_examples=3, max_time=None, phases="fuzzing,stateful", phases_without_key="fuzzing"
    )
    for result in (with_key, without_key):
        assert result["failures"] == {}, result["output"][-6000:]
        assert result["exit_code"] == 0, result["output"][-6000:]
    assert len(with_key["operations"]) >= 12 and with_key["cases"] >= 36, with_key
    assert with_key["server_500_in_metrics"] == 0
