"""The stage cache: content-addressed keys, atomic entries, damaged entries recomputed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweetspot.cache import StageCache
from sweetspot.data import read_table, write_table


def _writer(calls: list[int]):
    def compute(ctx) -> dict:
        calls.append(1)
        write_table(pd.DataFrame({"x": [1, 2, 3]}), ctx.out_dir / "t.parquet")
        return {"counts": {"rows": 3}}

    return compute


def test_same_config_is_computed_once(tmp_path: Path) -> None:
    cache, calls = StageCache(tmp_path), []
    a = cache.get_or_compute("s", {"k": 1}, ["in"], _writer(calls))
    b = cache.get_or_compute("s", {"k": 1}, ["in"], _writer(calls))
    assert len(calls) == 1 and not a.reused and b.reused and a.key == b.key
    c = cache.get_or_compute("s", {"k": 2}, ["in"], _writer(calls))
    d = cache.get_or_compute("s", {"k": 1}, ["other"], _writer(calls))
    assert len(calls) == 3 and len({a.key, c.key, d.key}) == 3
    assert b.meta["counts"] == {"rows": 3} and "t.parquet" in b.meta["files"]


def test_damaged_entry_is_recomputed(tmp_path: Path) -> None:
    cache, calls = StageCache(tmp_path), []
    entry = cache.get_or_compute("s", {}, [], _writer(calls))
    with open(entry.file("t.parquet"), "r+b") as f:  # flip bytes inside the table
        f.seek(10)
        f.write(b"\x00\x01\x02")
    again = cache.get_or_compute("s", {}, [], _writer(calls))
    assert len(calls) == 2 and not again.reused
    assert read_table(again.file("t.parquet"))["x"].tolist() == [1, 2, 3]
    assert list(tmp_path.glob("s/*.corrupt-*"))  # kept aside for inspection, never read


def test_failed_compute_leaves_no_entry(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)

    def boom(ctx) -> dict:
        (ctx.out_dir / "half.txt").write_text("partial")
        raise RuntimeError("killed")

    try:
        cache.get_or_compute("s", {}, [], boom)
    except RuntimeError:
        pass
    assert cache.lookup("s", cache.key("s", {}, [])) is None
    assert not list(tmp_path.glob("s/*.tmp-*"))
