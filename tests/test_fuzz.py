"""Fuzzing the readers: any bytes either load or raise a DataError naming the file; never a
crash of another kind, never a silently shortened table."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweetspot.errors import DataError
from sweetspot.tasks.jsonl import FileTask

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=10)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(blob)
    try:
        table = FileTask(path=str(path), heldout_fraction=0.0).load()
    except DataError as e:
        assert "fuzz.jsonl" in str(e)
        return
    assert len(table) == sum(1 for line in blob.split(b"\n") if line.strip())


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(["prompt", "id", "x"]), json_values,
                                max_size=3), min_size=1, max_size=6))
def test_arbitrary_json_rows(tmp_path: Path, rows: list[dict]) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        table = FileTask(path=str(path), heldout_fraction=0.0).load()
    except DataError as e:
        assert "rows.jsonl" in str(e)
        return
    assert len(table) == len(rows)  # every row loaded, or the whole file refused with a reason
    assert table["prompt"].map(lambda m: m[0]["content"].strip() != "").all()
