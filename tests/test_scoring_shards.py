"""Reward-model scoring in resumable shards (``Scorer.run`` with a partial folder).

A real subprocess scores with a tiny sequence-classification reward model (built here, loaded
with ``from_pretrained``) through the stage cache, is killed with SIGKILL after some shards are
on disk, and is rerun: it resumes at the first missing shard, and the table equals an
uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweetspot.errors import SweetspotError
from sweetspot.scoring.base import prompt_shards
from sweetspot.scoring.reward_model import RewardModelScorer
from tests.test_scorers import unbatched_reward


def table(prompts: int, per_prompt: int = 3, words: int = 6) -> pd.DataFrame:
    """Responses of ``prompts`` prompts, interleaved (a prompt's rows are not contiguous)."""
    rows = []
    for k in range(per_prompt):
        for p in range(prompts):
            text = " ".join(f"w{(p * 7 + k * 3 + j) % 23}" for j in range(words + (p + k) % 5))
            rows.append({"prompt_id": f"p{p}", "sample_id": k, "prompt": f"Question {p}?",
                         "response": text})
    return pd.DataFrame(rows, index=np.arange(len(rows)) * 10 + 3)


@pytest.fixture(scope="module")
def rm_dir(tiny_reward_model) -> Path:
    return tiny_reward_model()


def test_shards_hold_whole_prompts_in_first_appearance_order() -> None:
    ids = pd.Series(["b", "a", "b", "c", "a", "d", "c", "e"])
    shards = prompt_shards(ids, 2)
    assert [list(s) for s in shards] == [[0, 1, 2, 4], [3, 5, 6], [7]]


def test_sharded_scores_equal_one_call_and_rank_shares_assemble(rm_dir: Path,
                                                                tmp_path: Path) -> None:
    frame = table(5)
    whole = RewardModelScorer(name_or_path=str(rm_dir), shard_prompts=100, batch_size=4)
    one = whole.run(frame)  # no partial folder: one call, as before
    sharded = RewardModelScorer(name_or_path=str(rm_dir), shard_prompts=2, batch_size=4)
    got = sharded.run(frame, tmp_path / "a")
    assert got.stats["shards"] == 3 and got.stats["shards_computed"] == 3
    assert list(got.scores.index) == list(frame.index)
    np.testing.assert_allclose(got.scores["score/reward_model"], unbatched_reward(rm_dir, frame),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.scores["score/reward_model"],
                               one.scores["score/reward_model"], rtol=1e-5, atol=1e-6)
    assert got.stats["responses"] == 15 and got.stats["empty_responses"] == 0
    # padding_fraction merged over shards equals the padded share of all tokens
    lengths = got.scores["reward_model/num_tokens"].to_numpy()
    assert got.stats["tokens"] >= lengths.sum()
    padded = got.stats["tokens"] - lengths.sum()
    assert got.stats["padding_fraction"] == pytest.approx(padded / got.stats["tokens"])

    # Two "ranks": each computes its share; the first to finish cannot assemble alone.
    rank0 = RewardModelScorer(name_or_path=str(rm_dir), shard_prompts=2, batch_size=4)
    with pytest.raises(SweetspotError, match="score shard 1 of 3 is missing"):
        rank0.run(frame, tmp_path / "b", owned=lambda n: range(0, n, 2))
    rank1 = RewardModelScorer(name_or_path=str(rm_dir), shard_prompts=2, batch_size=4)
    both = rank1.run(frame, tmp_path / "b", owned=lambda n: range(1, n, 2))
    assert both.stats["shards_computed"] == 1
    pd.testing.assert_frame_equal(both.scores, got.scores)


def test_a_resume_with_another_shard_size_rescores(rm_dir: Path, tmp_path: Path) -> None:
    frame = table(4)
    first = RewardModelScorer(name_or_path=str(rm_dir), shard_prompts=2).run(frame, tmp_path)
    other = RewardModelScorer(name_or_path=str(rm_dir), shard_prompts=3).run(frame, tmp_path)
    assert other.stats["shards_resumed"] == 0 and other.stats["shards_computed"] == 2
    np.testing.assert_allclose(other.scores["score/reward_model"],
                               first.scores["score/reward_model"], rtol=1e-5, atol=1e-6)


PROMPTS = 80  # one prompt per shard: enough shards that the kill lands mid-way

def score_stage(cache: str | Path, rm: str | Path, frame_path: str | Path) -> None:
    """The score stage's shape: a stage-cache entry, its partial folder, ``scorer.run``."""
    import torch

    from sweetspot.cache import StageCache
    from sweetspot.data import write_table
    from sweetspot.pipeline import score_responses

    torch.set_num_threads(2)  # as in the test process, so both sum in one order
    frame = pd.read_parquet(frame_path)
    scorer = RewardModelScorer(name_or_path=str(rm), shard_prompts=1, batch_size=2,
                               bucket_by_length=False)

    def compute(ctx):
        table = frame.copy()
        stats = score_responses(scorer, table, ctx.partial_dir)
        write_table(table, ctx.out_dir / "scored.parquet")
        return {"counts": stats}

    StageCache(cache).get_or_compute("score", {"test": 1}, [], compute)


# The child process runs the same function.
CHILD = "import sys; from tests.test_scoring_shards import score_stage; score_stage(*sys.argv[1:4])"


def _score(cache: Path, rm_dir: Path, frame_path: Path) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-c", CHILD, str(cache), str(rm_dir),
                             str(frame_path)], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_scoring_resumes_at_the_first_missing_shard(rm_dir: Path,
                                                                tmp_path: Path) -> None:
    frame = table(PROMPTS, per_prompt=2, words=10)
    frame_path = tmp_path / "responses.parquet"
    frame.reset_index(drop=True).to_parquet(frame_path)
    cache = tmp_path / "cache"
    victim = _score(cache, rm_dir, frame_path)
    deadline, done = time.time() + 120, []
    while time.time() < deadline and victim.poll() is None:
        done = list(cache.glob("score/*.partial/scores-*.parquet"))
        if len(done) >= 3:
            break
        time.sleep(0.01)
    assert victim.poll() is None, "scoring ended before it could be killed mid-way"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not list(cache.glob("score/*/scored.parquet"))
    before = len(list(cache.glob("score/*.partial/scores-*.parquet")))
    assert 3 <= before < PROMPTS

    resumed = _score(cache, rm_dir, frame_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    score_stage(tmp_path / "clean", rm_dir, frame_path)  # uninterrupted, in this process

    meta = json.loads(next(cache.glob("score/*/meta.json")).read_text())["counts"]
    assert meta["shards_resumed"] == before and meta["shards"] == PROMPTS
    assert meta["shards_computed"] == PROMPTS - before and meta["responses"] == 2 * PROMPTS
    a = pd.read_parquet(next(cache.glob("score/*/scored.parquet")))
    b = pd.read_parquet(next((tmp_path / "clean").glob("score/*/scored.parquet")))
    pd.testing.assert_frame_equal(a, b)  # no row lost, duplicated or moved; same scores
    assert list(a["prompt_id"]) == list(frame["prompt_id"])
    assert a["score/reward_model"].notna().all()
    assert not list(cache.glob("score/*.partial"))  # the stage cleaned up its shards
