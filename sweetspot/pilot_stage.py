"""The pilot stage (``selection=pilot``): which (chosen, rejected) positions suit this model.

The strategy (``selection/pilot.py``) declares the pilot through ``needs_pilot`` and
``pilot_settings()``; the pipeline's select stage calls ``stage_pilot`` first and selects with
``after_pilot(pick)``. The pilot is one cache entry, keyed by the strategy's pilot settings, the
trainer, the loss, the model, the evaluation settings and scorer (``stage_keys.pilot_config``)
and its inputs (the prompts and denoised responses), so a rerun, or a sweep over the full run's
loss or seed with the same pilot, reuses it.

What it does, for each candidate: select its pairs from the pilot's train prompts (the run's
sampled and scored responses: no extra sampling), train a short LoRA run from the run's model,
answer the pilot's validation prompts (train-split prompts kept back from the pilot's training;
the run's held-out prompts stay untouched for the final evaluation) with the evaluation's
generation settings, and score them with the evaluation's scorer. Each candidate's reward
difference to the untrained policy's answers carries a paired-bootstrap 95% CI over the
validation prompts (``evaluation.evaluate.compare``), and so does its difference to the pick.
Each candidate's answers are kept in the stage's partial folder, so a killed pilot resumes at the
next candidate; the short runs' checkpoints are deleted once they have answered. The entry holds
``pilot.parquet`` (the table) and ``answers.parquet`` (every scored answer, for an audit).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sweetspot import stage_keys as keys
from sweetspot import stats
from sweetspot.data import read_table, write_table
from sweetspot.errors import SweetspotError
from sweetspot.models import ModelSpec, Policy
from sweetspot.selection.base import PilotSettings, SelectionStrategy

if TYPE_CHECKING:
    from sweetspot.pipeline import RunState

TABLE_COLUMNS = (
    "pair", "pairs", "steps", "train_loss", "reward", "reward_reference", "reward_delta",
    "reward_delta_low", "reward_delta_high", "win_rate", "win_rate_low", "win_rate_high",
    "vs_pick", "vs_pick_low", "vs_pick_high", "picked",
)


def pilot_prompts(
    prompt_ids: Any, prompt_fraction: float, validation_fraction: float, seed: int
) -> tuple[list, list]:
    """The pilot's (train, validation) prompt ids: ``prompt_fraction`` of the prompts (at least
    2), drawn with ``seed``, of which ``validation_fraction`` (at least 1, at most all but 1)
    are kept back. The draw depends on the set of ids only, not their order."""
    ids = sorted(pd.unique(pd.Series(list(prompt_ids))), key=str)
    if len(ids) < 2:
        raise SweetspotError(
            f"the pilot needs at least 2 train prompts with responses, this run has {len(ids)}"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    size = min(len(ids), max(2, math.ceil(prompt_fraction * len(ids))))
    held = min(size - 1, max(1, round(validation_fraction * size)))
    drawn = [ids[i] for i in order[:size]]
    return drawn[held:], drawn[:held]


def pick_best(table: pd.DataFrame, how: str) -> str:
    """The label of the best trained candidate: largest mean reward difference (``mean``) or
    largest lower bound of its CI (``lower``); ties go to the earlier candidate."""
    column = "reward_delta" if how == "mean" else "reward_delta_low"
    values = table[column].to_numpy(float)
    if not np.isfinite(values).any():
        raise SweetspotError(
            "no pilot candidate produced pairs on the pilot's prompts (see pilot.csv): raise "
            "selection.prompt_fraction or sample more responses per prompt"
        )
    return str(table["pair"].iloc[int(np.nanargmax(values))])


def stage_pilot(s: RunState, prompts: pd.DataFrame, denoised: pd.DataFrame) -> SelectionStrategy:
    """Run (or reuse) the pilot, write ``pilot.csv`` into the run folder and return the strategy
    the full run selects with."""
    from sweetspot.pipeline import selection_input

    strategy = s.plan.selection
    settings = strategy.pilot_settings()
    table = selection_input(denoised)

    def compute(ctx: Any) -> dict:
        result, answered, counts = run_pilot(s, settings, prompts, table, ctx.partial_dir)
        write_table(result, ctx.out_dir / "pilot.parquet")
        write_table(answered, ctx.out_dir / "answers.parquet")
        pick = str(result.loc[result["picked"], "pair"].iloc[0])
        return {"counts": counts, "pick": pick}

    entry = s.record(
        s.cache.get_or_compute(
            "pilot",
            keys.pilot_config(s.cfg, s.plan),
            [s.entries["prompts"].key, s.entries["denoise"].key],
            compute,
        )
    )
    result = read_table(entry.file("pilot.parquet"))
    s.run_dir.mkdir(parents=True, exist_ok=True)
    result.to_csv(s.run_dir / "pilot.csv", index=False)
    pick = str(entry.meta["pick"])
    s.metrics["pilot/pick"] = pick
    return strategy.after_pilot(pick)


def run_pilot(
    s: RunState,
    settings: PilotSettings,
    prompts: pd.DataFrame,
    table: pd.DataFrame,
    work: Path,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Every candidate's short run, scored against the untrained policy; returns the table
    (``TABLE_COLUMNS``, one row per candidate, in the candidates' order), every scored answer
    (``policy``: the candidate's pair, or ``untrained``) and the stage counts."""
    from sweetspot.evaluation.evaluate import compare
    from sweetspot.pipeline import attach_texts, score_responses

    work.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids = pilot_prompts(
        table["prompt_id"].unique(), settings.prompt_fraction, settings.validation_fraction,
        settings.seed,
    )
    evaluator = dataclasses.replace(s.plan.evaluation, max_prompts=None)
    scorer = s.plan.eval_scorer
    kept = prompts[prompts["prompt_id"].isin(val_ids)].assign(split="heldout")
    validation = evaluator.prompts(kept)
    base = s.policy(s.plan.model)

    def answers(path: Path, policy: Policy, system: str | None, label: str) -> pd.DataFrame:
        if not path.is_file():  # each policy's answers survive a kill
            out = evaluator.answer(validation, policy, system, label=label)
            score_responses(scorer, out)
            write_table(out, path)
        return read_table(path)

    reference = answers(work / "reference.parquet", base, None, "pilot reference")
    train_rows = table[table["prompt_id"].isin(train_ids)].reset_index(drop=True)
    trained: dict[str, pd.DataFrame] = {}
    rows = []
    for i, (label, candidate) in enumerate(settings.candidates.items()):
        pairs = attach_texts(candidate.select(train_rows).pairs, prompts, train_rows)
        row: dict[str, Any] = {"pair": label, "pairs": len(pairs)}
        if pairs.empty:
            rows.append(row)
            continue
        done = work / f"candidate{i}.parquet"
        if not done.is_file():
            run = work / f"candidate{i}"
            checkpoint, metrics = train_short(s, settings, pairs, run)
            spec = ModelSpec(source="hf", name_or_path=str(checkpoint),
                             dtype=s.plan.model.dtype, max_context=s.plan.model.max_context)
            write_table(pd.DataFrame([metrics]), work / f"candidate{i}.train.parquet")
            answers(done, Policy(spec, str(checkpoint)), candidate.eval_system_prompt(),
                    f"pilot {label}")
            shutil.rmtree(run, ignore_errors=True)
        trained[label] = read_table(done)
        metrics = read_table(work / f"candidate{i}.train.parquet").iloc[0].to_dict()
        m = compare(trained[label], reference, scorer.column, f"{scorer.name}/detail")
        row |= {
            "steps": metrics.get("train/steps"),
            "train_loss": metrics.get("train/loss"),
            "reward": m["eval/reward_trained"],
            "reward_reference": m["eval/reward_reference"],
            "reward_delta": m.get("eval/reward_delta"),
            "reward_delta_low": m.get("eval/reward_delta_ci95", [None, None])[0],
            "reward_delta_high": m.get("eval/reward_delta_ci95", [None, None])[1],
            "win_rate": m["eval/win_rate"],
            "win_rate_low": m.get("eval/win_rate_ci95", [None, None])[0],
            "win_rate_high": m.get("eval/win_rate_ci95", [None, None])[1],
        }
        rows.append(row)
    result = pd.DataFrame(rows).reindex(columns=list(TABLE_COLUMNS))
    result["picked"] = False
    pick = pick_best(result, settings.pick)
    result.loc[result["pair"] == pick, "picked"] = True
    for label, answered in trained.items():  # every candidate against the pick, paired
        both = answered.merge(trained[pick], on=["prompt_id", "sample_id"],
                              suffixes=("", "_pick"))
        r, r_pick = both[scorer.column].to_numpy(float), both[f"{scorer.column}_pick"].to_numpy(
            float)
        ok = np.isfinite(r) & np.isfinite(r_pick)
        if ok.any():
            vs = stats.reward_delta(r[ok], r_pick[ok], both["prompt_id"].to_numpy()[ok])
            at = result["pair"] == label
            result.loc[at, ["vs_pick", "vs_pick_low", "vs_pick_high"]] = [vs.estimate, vs.low,
                                                                         vs.high]
    counts = {
        "candidates": len(settings.candidates),
        "trained": len(trained),
        "train_prompts": len(train_ids),
        "validation_prompts": len(val_ids),
    }
    answered = pd.concat([reference.assign(policy="untrained"),
                          *(a.assign(policy=label) for label, a in trained.items())],
                         ignore_index=True)
    keep = ["policy", "prompt_id", "sample_id", "response", "num_tokens", scorer.column]
    return result, answered[[c for c in keep if c in answered]], counts


def train_short(
    s: RunState, settings: PilotSettings, pairs: pd.DataFrame, run: Path
) -> tuple[Path, dict[str, Any]]:
    """One candidate's short LoRA run from the run's model: exactly ``settings.steps`` steps
    (as many epochs as that takes), merged weights so the answers load like any checkpoint."""
    from sweetspot.training.train import train_policy

    trainer = s.plan.trainer
    cfg = dataclasses.replace(
        trainer,
        max_steps=settings.steps,
        epochs=settings.steps,  # every epoch has >= 1 step: max_steps is what ends the run
        lr=settings.lr if settings.lr is not None else trainer.lr,
        checkpoint_every_n_steps=0,
        save="merged",
    )
    shutil.rmtree(run, ignore_errors=True)
    metrics = train_policy(pairs, s.policy(s.plan.model), cfg, s.plan.loss, s.cache, run, [])
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return run / "checkpoint", keep
