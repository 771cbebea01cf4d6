"""Preference data users already have: comparisons only (Bradley-Terry reward) and the pair
layouts (TRL / UltraFeedback-binarized, HH-RLHF transcripts), read, merged and run to selection.

The Bradley-Terry fit is checked against scipy.optimize on the penalised log-likelihood written
out here term by term; the layouts against the rows the test wrote.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.optimize import minimize

from sweetspot.errors import ConfigError, DataError
from sweetspot.pipeline import run_pipeline
from sweetspot.sampling.offline import OfflineSampler
from sweetspot.scoring.comparisons import DataScorer, bradley_terry_rewards


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def scipy_bradley_terry(n: int, comparisons: list[tuple[int, int, float]], prior: float):
    """MAP strengths by BFGS on -sum_k [p log s(d) + (1 - p) log s(-d)] + prior/2 |s|^2."""

    def loss(s: np.ndarray) -> float:
        total = 0.5 * prior * float(s @ s)
        for i, j, p in comparisons:
            d = s[i] - s[j]
            total += p * math.log1p(math.exp(-d)) + (1 - p) * math.log1p(math.exp(d))
        return total

    found = minimize(loss, np.zeros(n), method="BFGS", options={"gtol": 1e-9})
    return found.x


# -- the Bradley-Terry fit ------------------------------------------------------------------------


def test_bradley_terry_matches_scipy_on_the_penalised_likelihood() -> None:
    rng = np.random.default_rng(3)
    cases = {
        "separated": (2, [(0, 1, 1.0)]),  # one unanimous label: no MLE without the prior
        "chain": (4, [(0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0)]),  # perfect separation, all
        "soft_repeated": (3, [(0, 1, 0.7), (0, 1, 1.0), (2, 0, 0.4), (1, 2, 0.0)]),
        "random": (6, [(int(a), int(b), float(p)) for a, b, p in zip(
            rng.integers(0, 3, 12), rng.integers(3, 6, 12), rng.random(12), strict=True)]),
    }
    responses, comparisons, expected = [], [], {}
    for pid, (n, items) in cases.items():
        # one response more than the comparisons name: it has no strength
        responses += [{"prompt_id": pid, "sample_id": k} for k in range(n + 1)]
        comparisons += [{"prompt_id": pid, "i": i, "j": j, "p": p} for i, j, p in items]
        expected[pid] = scipy_bradley_terry(n, items, prior=0.1)
    table = pd.DataFrame(responses)
    values, stats = bradley_terry_rewards(table, pd.DataFrame(comparisons), prior=0.1)
    for pid, want in expected.items():
        got = values[(table["prompt_id"] == pid).to_numpy()]
        np.testing.assert_allclose(got[:-1], want, atol=1e-5, err_msg=pid)
        assert math.isnan(got[-1])  # in no comparison: no strength
    assert stats["not_compared"] == len(cases)
    # the prior makes the separated case finite: 2 s = 0.1-weighted balance, s ~ 1.064
    assert expected["separated"][0] == pytest.approx(1.064, abs=1e-3)


# -- comparisons only ---------------------------------------------------------------------------

TRUTH = {"q1": [3.0, 2.0, 1.0, 0.0, -1.0], "q2": [0.0, 2.5, 1.0, -0.5]}


def comparison_rows(flip: tuple[str, int, int] | None = None, soft: bool = False) -> list[dict]:
    """Complete comparisons from TRUTH: 0/1 labels, or (``soft``) the Bradley-Terry
    probabilities; ``flip`` reverses one."""
    rows = []
    for pid, strengths in TRUTH.items():
        items = []
        for i in range(len(strengths)):
            for j in range(i + 1, len(strengths)):
                label = 1.0 if strengths[i] > strengths[j] else 0.0
                if soft:
                    label = 1.0 / (1.0 + math.exp(strengths[j] - strengths[i]))
                if flip == (pid, i, j):
                    label = 1.0 - label
                items.append([i, j, label])
        rows.append({"id": pid, "prompt": f"Question {pid}?",
                     "responses": [f"{pid} answer {k}" for k in range(len(strengths))],
                     "comparisons": items})
    return rows


def test_comparisons_only_run_with_rpca_and_nothing_more(make_cfg, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "labels.jsonl", comparison_rows(flip=("q1", 0, 1)))
    cfg = make_cfg("sampler=offline", f"sampler.path={path}", "denoiser=rpca", "logger=none")
    assert cfg.scorer["_target_"].endswith("DataScorer") and cfg.until == "select"
    metrics = run_pipeline(cfg, tmp_path / "run")
    responses = pd.read_parquet(tmp_path / "run" / "responses.parquet")
    assert metrics["score/from_comparisons"] == 1
    for pid, group in responses.groupby("prompt_id"):
        items = [(int(i), int(j), float(p)) for row in comparison_rows(("q1", 0, 1))
                 if row["id"] == pid for i, j, p in row["comparisons"]]
        want = scipy_bradley_terry(len(TRUTH[pid]), items, prior=0.1)
        np.testing.assert_allclose(group.sort_values("sample_id")["reward"], want, atol=1e-5)
    pairs = pd.read_parquet(tmp_path / "run" / "pairs.parquet")
    assert len(pairs) == 2
    for pair in pairs.itertuples():  # sweet spot: chosen = the best denoised reward
        group = responses[responses["prompt_id"] == pair.prompt_id]
        assert pair.chosen_sample_id == group.loc[group["reward_denoised"].idxmax(), "sample_id"]


def test_rpca_on_the_comparisons_recovers_the_order_a_wrong_label_breaks(make_cfg,
                                                                        tmp_path: Path) -> None:
    """CURATRON's setting: Bradley-Terry probabilities with q1's best-vs-worst one reversed.
    The Bradley-Terry fit (``reward``) then ranks response 1 above 0 and 4 above 3; the row
    means of RPCA of the comparisons (denoiser.source=comparisons) rank them as the truth."""
    path = write_jsonl(tmp_path / "labels.jsonl", comparison_rows(flip=("q1", 0, 4), soft=True))
    run_pipeline(make_cfg("sampler=offline", f"sampler.path={path}", "denoiser=rpca",
                          "denoiser.source=comparisons", "logger=none"), tmp_path / "run")
    responses = pd.read_parquet(tmp_path / "run" / "responses.parquet")
    q1 = responses[responses["prompt_id"] == "q1"].sort_values("sample_id")
    assert list(np.argsort(-q1["reward"].to_numpy())) == [1, 0, 2, 4, 3]
    assert list(np.argsort(-q1["reward_denoised"].to_numpy())) == [0, 1, 2, 3, 4]
    assert abs(q1["reward_denoised"].mean()) < 1e-9  # centred on the fit's mean, 0


def test_plain_rpca_command_denoises_the_comparisons(make_cfg, tmp_path: Path) -> None:
    """``sampler=offline sampler.path=FILE denoiser=rpca`` and nothing more (``source: auto``) on
    comparisons only, one label wrong: it denoises the comparisons, so the true order comes
    back where the Bradley-Terry fit (what ``source=rewards`` would keep) misranks. Expected
    orders come from TRUTH; the three sources get three denoise cache keys."""
    from sweetspot.stage_keys import stage_keys

    path = write_jsonl(tmp_path / "labels.jsonl", comparison_rows(flip=("q1", 0, 4), soft=True))
    plain = ("sampler=offline", f"sampler.path={path}", "denoiser=rpca")
    cfg = make_cfg(*plain, "logger=none")
    assert cfg.denoiser.source == "auto"
    metrics = run_pipeline(cfg, tmp_path / "run")
    assert metrics["denoise/source_comparisons"] == 1
    responses = pd.read_parquet(tmp_path / "run" / "responses.parquet")
    for pid, truth in TRUTH.items():
        group = responses[responses["prompt_id"] == pid].sort_values("sample_id")
        want = list(np.argsort(-np.array(truth)))
        assert list(np.argsort(-group["reward_denoised"].to_numpy())) == want, pid
    q1 = responses[responses["prompt_id"] == "q1"].sort_values("sample_id")
    assert list(np.argsort(-q1["reward"].to_numpy())) == [1, 0, 2, 4, 3]  # the fit misranks
    pairs = pd.read_parquet(tmp_path / "run" / "pairs.parquet")
    chosen = dict(zip(pairs["prompt_id"], pairs["chosen_sample_id"], strict=True))
    assert chosen == {pid: int(np.argmax(truth)) for pid, truth in TRUTH.items()}

    rewards = run_pipeline(make_cfg(*plain, "denoiser.source=rewards", "logger=none"),
                           tmp_path / "rewards")
    assert rewards["denoise/source_comparisons"] == 0
    kept = pd.read_parquet(tmp_path / "rewards" / "responses.parquet")
    q1 = kept[kept["prompt_id"] == "q1"].sort_values("sample_id")
    assert list(np.argsort(-q1["reward_denoised"].to_numpy())) == [1, 0, 2, 4, 3]  # rank 2
    keys = {source: stage_keys(make_cfg(*plain, f"denoiser.source={source}"))
            for source in ("auto", "rewards", "comparisons")}
    assert len({k["denoise"] for k in keys.values()}) == 3
    assert len({k["score"] for k in keys.values()}) == 1


def test_data_scorer_prefers_the_data_scores_and_says_when_it_has_none() -> None:
    table = pd.DataFrame({"prompt_id": ["a", "a"], "sample_id": [0, 1], "response": ["x", "y"],
                          "score": [1.0, 4.0], "comparisons": [[[1.0, 1.0]], []]})
    scorer = DataScorer()
    assert list(scorer.score(table)["score/data"]) == [1.0, 4.0]
    fitted = DataScorer(source="comparisons").score(table)["score/data"]
    assert fitted[0] > 0 > fitted[1]  # the label, not the scores
    with pytest.raises(DataError, match="no scores .* or pairwise comparisons"):
        DataScorer().score(table.drop(columns=["score", "comparisons"]))


# -- pair layouts -------------------------------------------------------------------------------

def uf_row(prompt: str, chosen: str, rejected: str, sc: float, sr: float) -> dict:
    user = {"role": "user", "content": prompt}
    return {"prompt": prompt, "prompt_id": f"h{len(prompt)}",
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
            "messages": [user, {"role": "assistant", "content": chosen}],
            "score_chosen": sc, "score_rejected": sr}


def hh(prompt: str, answer: str) -> str:
    return f"\n\nHuman: Hi there.\n\nAssistant: Hello!\n\nHuman: {prompt}\n\nAssistant: {answer}"


# Each layout: 5 rows, 3 prompts; rows 1, 3 and 5 share a prompt and "B" appears twice in it.
PAIRS = [("Name a color.", "Blue.", "B", 8.0, 2.0), ("Say hi.", "Hello!", "hi", 7.0, 6.5),
         ("Name a color.", "Red.", "B", 9.0, 2.0), ("Count to 3.", "1 2 3", "1 2", 9.5, 1.0),
         ("Name a color.", "Blue.", "Red.", 8.0, 9.0)]
LAYOUTS = {
    "trl_strings": [{"prompt": p, "chosen": c, "rejected": r} for p, c, r, _, _ in PAIRS],
    "trl_messages": [{"prompt": [{"role": "user", "content": p}],
                      "chosen": [{"role": "assistant", "content": c}],
                      "rejected": [{"role": "assistant", "content": r}]}
                     for p, c, r, _, _ in PAIRS],
    "ultrafeedback_binarized": [uf_row(*row) for row in PAIRS],
    "hh_rlhf": [{"chosen": hh(p, c), "rejected": hh(p, r)} for p, c, r, _, _ in PAIRS],
}


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pair_layouts_merge_rows_by_prompt(layout: str, suffix: str, tmp_path: Path) -> None:
    write = write_jsonl if suffix == "jsonl" else write_parquet
    path = write(tmp_path / f"data.{suffix}", LAYOUTS[layout])
    sampler = OfflineSampler(path=str(path))
    assert sampler.detect_layout(LAYOUTS[layout][0]) == (
        "transcripts" if layout == "hh_rlhf" else "pairs")
    prompts = sampler.load_prompts()
    assert list(prompts["prompt_id"]) == ["row-000001", "row-000002", "row-000004"]
    last_turn = [m[-1]["content"] for m in prompts["prompt"]]
    assert last_turn == ["Name a color.", "Say hi.", "Count to 3."]
    if layout == "hh_rlhf":  # the earlier turns stay in the prompt
        assert [m["role"] for m in prompts["prompt"][0]] == ["user", "assistant", "user"]
    table = sampler.sample(prompts)
    color = table[table["prompt_id"] == "row-000001"]
    assert list(color["response"]) == ["Blue.", "B", "Red."]  # deduplicated, first-seen order
    comparisons = sampler.comparisons()
    color_pairs = comparisons[comparisons["prompt_id"] == "row-000001"]
    assert list(zip(color_pairs["i"], color_pairs["j"], strict=True)) == [(0, 1), (2, 1), (0, 2)]
    assert set(comparisons["p"]) == {1.0} and len(comparisons) == 5
    assert list(color["data_chosen"]) == [True, False, False]  # the prompt's first row's pair
    assert list(color["data_rejected"]) == [False, True, False]
    assert [list(map(list, c)) for c in color["comparisons"]] == [
        [[1.0, 1.0], [2.0, 1.0]], [], [[1.0, 1.0]]]
    stats = sampler.data().stats
    assert stats["offline/merged_rows"] == 2 and stats["offline/duplicate_responses"] == 3
    assert stats["offline/prompts_with_several_pairs"] == 1
    if layout == "ultrafeedback_binarized":
        assert list(table["score"]) == [8.0, 2.0, 9.0, 7.0, 6.5, 9.5, 1.0]
        assert stats["offline/conflicting_scores"] == 0
    else:
        assert "score" not in table


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pair_layouts_run_to_selection(layout: str, make_cfg, tmp_path: Path) -> None:
    """BeeS on the data's own pairs, MixDPO routing and RPCA of the comparisons, each to
    ``until=select`` through the composed pipeline."""
    path = write_jsonl(tmp_path / "data.jsonl", LAYOUTS[layout])
    base = ("sampler=offline", f"sampler.path={path}", "logger=none")
    has_scores = layout == "ultrafeedback_binarized"
    bees = run_pipeline(make_cfg(*base, "selection=margin_external", "selection.candidates=data",
                                 "selection.search_min_count=1", "selection.top_fraction=1.0"),
                        tmp_path / "bees")
    pairs = pd.read_parquet(tmp_path / "bees" / "pairs.parquet")
    assert bees["score/from_comparisons"] == (0 if has_scores else 1)
    assert len(pairs) == 3  # one data pair per prompt
    chosen = dict(zip(pairs["prompt_id"], pairs["chosen"], strict=True))
    assert chosen == {"row-000001": "Blue.", "row-000002": "Hello!", "row-000004": "1 2 3"}
    if has_scores:  # the external margin is the data's score gap (what RDPO's loss reads)
        gaps = dict(zip(pairs["prompt_id"], pairs["chosen_reward"] - pairs["rejected_reward"],
                        strict=True))
        assert gaps == pytest.approx({"row-000001": 6.0, "row-000002": 0.5, "row-000004": 8.5})
    run_pipeline(make_cfg(*base, "selection=routing", "selection.threshold=1.0"),
                 tmp_path / "routing")
    routed = pd.read_parquet(tmp_path / "routing" / "pairs.parquet")
    assert set(routed["route"]) <= {"sft", "dpo"} and len(routed) == 3
    assert ((routed["margin"] < 1.0) == (routed["route"] == "sft")).all()
    rpca = run_pipeline(make_cfg(*base, "denoiser=rpca", "denoiser.source=comparisons",
                                 "selection=max_min"), tmp_path / "rpca")
    # one comparison between two responses: RPCA puts it all in S, a tie (docs/your_data.md)
    assert rpca["select/pairs"] == 1 and rpca["select/skipped/zero_sigma"] == 2
    denoised = pd.read_parquet(tmp_path / "rpca" / "responses.parquet")
    assert denoised["reward_denoised"].notna().all()
    color = denoised[denoised["prompt_id"] == "row-000001"].sort_values("sample_id")
    # Blue. beats B and Red., Red. beats B: the row means of L order them so
    assert list(color.sort_values("reward_denoised")["response"]) == ["B", "Red.", "Blue."]


# -- malformed rows -----------------------------------------------------------------------------

GOOD = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}
GOOD_HH = {"chosen": "\n\nHuman: Q?\n\nAssistant: yes",
           "rejected": "\n\nHuman: Q?\n\nAssistant: no"}


@pytest.mark.parametrize(("bad", "message", "field"), [
    ({"prompt": "Q?", "rejected": "no"}, "missing chosen", "chosen"),
    ({**GOOD, "chosen": 3}, "chosen must be a string or chat messages", "chosen"),
    ({**GOOD, "rejected": [{"role": "user", "content": "other"},
                           {"role": "assistant", "content": "no"}]},
     "rejected must be the response", "rejected"),
    ({**GOOD, "chosen": [{"role": "assistant"}]}, "expected a string or a list", "chosen"),
    ({**GOOD, "score_chosen": "high"}, "a score must be a number", "score_chosen"),
    ({**GOOD, "prompt": "  "}, "empty prompt", "prompt"),
], ids=["missing_chosen", "chosen_number", "other_conversation", "bad_message", "bad_score",
        "empty_prompt"])
def test_pair_rows_errors_name_file_line_field(bad: dict, message: str, field: str,
                                               tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, bad])
    with pytest.raises(DataError, match=message) as err:
        OfflineSampler(path=str(path)).load_prompts()
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, field)


@pytest.mark.parametrize(("bad", "message", "field"), [
    ({**GOOD_HH, "chosen": "Q? yes"}, "a transcript must be turns", "chosen"),
    ({**GOOD_HH, "rejected": "\n\nHuman: Other?\n\nAssistant: no"},
     "does not share the chosen one's prompt", "rejected"),
    ({**GOOD_HH, "chosen": "\n\nHuman: Q?\n\nAssistant: yes\n\nHuman: and?"},
     "must end with an assistant turn", "chosen"),
    ({**GOOD_HH, "chosen": "\n\nAssistant: yes"}, "no user turn", "chosen"),
], ids=["no_markers", "different_prompt", "ends_with_human", "no_prompt"])
def test_transcript_errors_name_file_line_field(bad: dict, message: str, field: str,
                                                tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hh.jsonl", [GOOD_HH, bad])
    with pytest.raises(DataError, match=message) as err:
        OfflineSampler(path=str(path)).load_prompts()
    assert (err.value.line, err.value.field) == (2, field)


def test_pair_errors_in_parquet_name_the_row_and_ids_must_not_clash(tmp_path: Path) -> None:
    rows = [{**GOOD, "score_chosen": 1.0}, {**GOOD, "score_chosen": 2.0},
            {**GOOD, "prompt": None, "score_chosen": 3.0}]
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    with pytest.raises(DataError, match=r"pairs\.parquet:3: ") as err:
        OfflineSampler(path=str(path)).load_prompts()
    assert err.value.field == "prompt"
    clash = write_jsonl(tmp_path / "ids.jsonl", [{**GOOD, "id": "a"},
                                                 {**GOOD, "prompt": "Other?", "id": "a"}])
    with pytest.raises(DataError, match="duplicate id 'a' .first on line 1") as err:
        OfflineSampler(path=str(clash)).load_prompts()
    assert (err.value.line, err.value.field) == (2, "id")
    with pytest.raises(ConfigError, match="score_fields"):
        OfflineSampler(path=str(clash), score_fields={"score": "x"}).load_prompts()


def test_identical_pairs_and_conflicting_scores_are_counted(tmp_path: Path) -> None:
    rows = [{**GOOD, "score_chosen": 5.0, "score_rejected": 1.0},
            {**GOOD, "score_chosen": 4.0, "score_rejected": None},  # "yes" scored twice
            {**GOOD, "rejected": "yes", "score_chosen": 5.0, "score_rejected": 5.0}]
    sampler = OfflineSampler(path=str(write_jsonl(tmp_path / "p.jsonl", rows)))
    table = sampler.sample(sampler.load_prompts())
    assert list(table["response"]) == ["yes", "no"]
    assert list(table["score"]) == [5.0, 1.0]  # the first score kept
    stats = sampler.data().stats
    assert (stats["offline/conflicting_scores"], stats["offline/identical_pairs"]) == (1, 1)
    assert len(sampler.comparisons()) == 2  # rows 1 and 2; row 3 compares "yes" with itself
