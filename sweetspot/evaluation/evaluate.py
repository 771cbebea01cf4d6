"""Evaluation: the trained policy against its reference on held-out prompts.

Both policies answer the same prompts with the same generation settings and seeds; the run's
scorer scores both. Metrics: mean reward of each and their difference, win rate of trained over
reference (ties count one half), the last two with paired-bootstrap 95% intervals over prompts
(``sweetspot.stats``); IFEval strict accuracy (prompt and instruction level) and per-constraint
pass rates when the scorer reports them; mean length; and a KL estimate: the mean over the
trained policy's own responses of log pi(y|x) - log pi_ref(y|x),
the standard Monte-Carlo estimator of KL(pi || pi_ref) when responses are sampled (with greedy
decoding it is a proxy: greedy outputs are not samples).

The pipeline's evaluate stage calls ``Evaluator.prompts`` (which held-out prompts),
``Evaluator.answer`` (one policy's answers, under the strategy's ``eval_system_prompt()`` for the
trained policy), ``Evaluator.kl_logratio`` (for the trained policy only) and ``compare``.

Answers are generated in shards of ``shard_size`` prompts, each written to the stage's partial
folder: a killed evaluation resumes at the first missing shard, and in a job of several ranks
(``sweetspot.distributed``) the ranks split the shards. The shard plan depends on
``shard_size`` only, so a one-process run and a many-rank run answer in the same batches.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sweetspot import stats
from sweetspot.data import as_messages, read_table, write_table
from sweetspot.distributed import SOLO, Ranks
from sweetspot.sampling.base import RESPONSE_COLUMNS
from sweetspot.sampling.hf import GenerationSettings
from sweetspot.training.data import prompt_messages
from sweetspot.training.logprobs import completion_logps
from sweetspot.validation import at_least, non_negative

GENERATION_SYSTEM = "generation_system_prompt"


@dataclass(kw_only=True)
class Evaluator:
    # Batch sizes of generation and of the KL log-probs, and the answers' shard size: speed and
    # resumability only (as the sampler's batch_size and shard_size).
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "kl_batch_size", "shard_size")

    max_prompts: int | None = None
    n: int = 1
    greedy: bool = True
    temperature: float = 0.8
    max_new_tokens: int = 96  # as the sampler's: the answers compared are sampled alike
    batch_size: int = 32  # prompts per forward
    seed: int = 0
    kl_batch_size: int = 32  # prompts per forward of the KL log-probs
    shard_size: int = 32  # prompts per answers shard (the unit of resuming and of rank sharing)
    # A scorer node (with _target_) for evaluation; null: the run's scorer. Typed Any: a node
    # given on the command line replaces the null (a typed dict node cannot take one).
    scorer: Any = None

    def __post_init__(self) -> None:
        at_least("n", self.n, 1)
        non_negative("temperature", self.temperature)
        at_least("max_new_tokens", self.max_new_tokens, 1)
        at_least("shard_size", self.shard_size, 1)
        if self.max_prompts is not None:
            at_least("max_prompts", self.max_prompts, 1)

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            n=self.n,
            seed=self.seed,
            max_new_tokens=self.max_new_tokens,
            temperature=0.0 if self.greedy else self.temperature,
            batch_size=self.batch_size,
            overlong="truncate",
        )

    def prompts(self, prompts: pd.DataFrame) -> pd.DataFrame:
        """The held-out prompts as plain conversations (what the scorer sees)."""
        held = prompts[prompts["split"] == "heldout"]
        if self.max_prompts is not None:
            held = held.head(self.max_prompts)
        held = held.drop(columns=[c for c in ("system_prompt",) if c in held]).copy()
        held["prompt"] = [as_messages(p) for p in held["prompt"]]
        return held.reset_index(drop=True)

    def answer(self, prompts: pd.DataFrame, policy: Any,
               system_prompt: str | None = None, label: str = "answer") -> pd.DataFrame:
        """``policy``'s answers to ``prompts``. ``system_prompt`` conditions the generation only
        (reward-augmented policies, Zhang et al. 2025): the table keeps the plain conversation
        in ``prompt``, so a scorer judges the answer to the user's request, not to the target
        score, and records the condition in ``generation_system_prompt``. ``label`` names the
        progress bar. Rows come in the order of ``prompts``, then ``sample_id``."""
        table, _ = self.answer_shards(prompts, policy, system_prompt, label)
        assert table is not None  # one process: rank 0
        return table

    def answer_shards(
        self,
        prompts: pd.DataFrame,
        policy: Any,
        system_prompt: str | None = None,
        label: str = "answer",
        partial_dir: Path | None = None,
        ranks: Ranks = SOLO,
    ) -> tuple[pd.DataFrame | None, dict[str, int]]:
        """``answer`` in shards of ``shard_size`` prompts, each kept in ``partial_dir`` (a rerun
        reuses them), the missing ones split between the job's ``ranks``. Returns the table
        (None on ranks other than 0, once every shard is written) and each rank's share
        (``shards/rank<k>``, several ranks only). Without ``partial_dir``: one shard, in memory.
        """
        condition = prompts.assign(system_prompt=system_prompt)
        condition["prompt"] = [prompt_messages(r) for r in condition.to_dict("records")]
        settings = self.settings()
        size = self.shard_size if partial_dir is not None else max(1, len(condition))
        bounds = [(a, min(a + size, len(condition))) for a in range(0, len(condition), size)]

        def path(i: int) -> Path | None:
            return None if partial_dir is None else partial_dir / f"answers-{i:05d}.parquet"

        if partial_dir is not None:
            partial_dir.mkdir(parents=True, exist_ok=True)
        missing = [i for i in range(len(bounds)) if path(i) is None or not path(i).is_file()]
        mine = ranks.split(missing if ranks.main else [])
        made: dict[int, pd.DataFrame] = {}
        with tqdm(total=sum(bounds[i][1] - bounds[i][0] for i in mine), desc=label,
                  unit="prompt") as bar:
            settings.progress = bar.update  # advanced per generated batch
            for i in mine:
                a, b = bounds[i]
                made[i] = settings.generate(condition.iloc[a:b], policy)
                if partial_dir is not None:
                    write_table(made[i], path(i))
        shares = ranks.shares(len(mine))  # every rank's shards are on disk after this
        if not ranks.main:
            return None, shares
        parts = [made[i] if i in made else read_table(path(i)) for i in range(len(bounds))]
        table = (pd.concat(parts, ignore_index=True) if parts
                 else pd.DataFrame(columns=list(RESPONSE_COLUMNS)))
        order = {pid: k for k, pid in enumerate(prompts["prompt_id"])}
        table = (
            table.assign(_order=table["prompt_id"].map(order))
            .sort_values(["_order", "sample_id"], kind="stable")
            .drop(columns="_order")
            .reset_index(drop=True)
        )
        table = table.merge(prompts, on="prompt_id", how="left")
        table[GENERATION_SYSTEM] = system_prompt
        return table, shares

    def kl_logratio(self, answers: pd.DataFrame, policy: Any, reference: Any) -> np.ndarray:
        """Per answer of ``policy``, log pi(y|x) - log pi_ref(y|x) in the context it was
        generated in: the terms of the KL estimate (``compare`` averages the ``kl_logratio``
        column). The pipeline asks for it on the trained policy's answers only."""
        lp_policy = response_logps(policy.model, policy.tokenizer, answers, self.kl_batch_size)
        lp_ref = response_logps(reference.model, reference.tokenizer, answers, self.kl_batch_size)
        return lp_policy - lp_ref


@torch.no_grad()
def response_logps(model: Any, tok: Any, table: pd.DataFrame, batch_size: int) -> np.ndarray:
    """Summed log-probs of each row's response (plus EOS) under ``model``, in the context the
    response was generated in (the prompt plus ``generation_system_prompt`` when set: a
    reward-augmented policy's KL is measured where it answered, as its training measured it)."""
    from sweetspot.training.data import TokenizedPair, collate

    items = []
    for rec in table.to_dict("records"):
        messages = prompt_messages({"prompt": rec["prompt"],
                                    "system_prompt": rec.get(GENERATION_SYSTEM)})
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        body = tok(rec["response"] or "", add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id
        ]
        items.append(
            TokenizedPair(
                prompt,
                body,
                body,
                {"chosen_reward": 0.0, "rejected_reward": 0.0, "weight": 1.0, "route_sft": False},
            )
        )
    out = np.zeros(len(items))
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = collate(chunk, tok.pad_token_id)
        half = len(chunk)
        logps = completion_logps(
            model,
            batch["input_ids"][:half],
            batch["attention_mask"][:half],
            batch["completion_mask"][:half],
        )
        out[start : start + half] = logps.double().numpy()
    return out


def compare(
    trained: pd.DataFrame,
    reference: pd.DataFrame,
    reward_col: str,
    detail_col: str | None,
    *,
    resamples: int = stats.RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of trained vs reference answers (aligned on prompt_id, sample_id).

    Reward delta and win rate carry paired-bootstrap 95% intervals over prompts
    (``sweetspot.stats``): the held-out set is a sample of prompts, and a difference of a few
    hundredths on 64 prompts is noise unless its interval says otherwise. Strict accuracy is
    IFEval's binary measure beside the graded reward: prompt level is the share of answers that
    meet every constraint (``<scorer>/strict``), instruction level the share of all constraints
    met exactly (from ``<scorer>/detail``). Keys a scorer has no columns for are left out.
    """
    keys = ["prompt_id", "sample_id"]
    both = trained.merge(reference, on=keys, suffixes=("_trained", "_reference"))
    r_t, r_r = both[f"{reward_col}_trained"], both[f"{reward_col}_reference"]
    wins = (r_t > r_r).astype(float) + 0.5 * (r_t == r_r).astype(float)
    scored = (r_t.notna() & r_r.notna()).to_numpy()  # a pair with an unscored side is no evidence
    ids = both["prompt_id"].to_numpy()[scored]
    t_ok, r_ok = r_t.to_numpy(float)[scored], r_r.to_numpy(float)[scored]
    metrics: dict[str, Any] = {
        "eval/prompts": int(both["prompt_id"].nunique()),
        "eval/reward_trained": float(r_t.mean()),
        "eval/reward_reference": float(r_r.mean()),
        "eval/win_rate": float(wins.mean()),
        "eval/length_trained": float(both["num_tokens_trained"].mean()),
        "eval/length_reference": float(both["num_tokens_reference"].mean()),
    }
    if scored.any():
        delta = stats.reward_delta(t_ok, r_ok, ids, resamples=resamples, seed=seed)
        win = stats.win_rate(t_ok, r_ok, ids, resamples=resamples, seed=seed)
        metrics["eval/reward_delta"] = delta.estimate
        metrics["eval/reward_delta_ci95"] = delta.bounds()
        metrics["eval/win_rate_ci95"] = win.bounds()
    if "kl_logratio" in trained:
        metrics["eval/kl_estimate"] = float(trained["kl_logratio"].mean())
    if detail_col:
        name = detail_col.rsplit("/", 1)[0]
        for side, table in (("trained", trained), ("reference", reference)):
            prompt_level = strict_accuracy(table, name)
            if prompt_level is not None:
                metrics[f"eval/strict_accuracy/{side}"] = prompt_level
            instruction_level = strict_instruction_accuracy(table, name)
            if instruction_level is not None:
                metrics[f"eval/strict_accuracy_instruction/{side}"] = instruction_level
        if detail_col in trained:
            for side, table in (("trained", trained), ("reference", reference)):
                for kind, rate in pass_rates(table, detail_col).items():
                    metrics[f"eval/pass/{kind}/{side}"] = rate
    return metrics


def strict_accuracy(table: pd.DataFrame, scorer: str) -> float | None:
    """IFEval prompt-level strict accuracy: share of answers meeting all their constraints.

    ``<scorer>/strict`` when the scorer writes it; else ``<scorer>/passed == 1`` (the share of
    constraints met is 1 exactly when all are). None when the scorer has neither column.
    """
    if f"{scorer}/strict" in table:
        values = table[f"{scorer}/strict"].astype(float)
    elif f"{scorer}/passed" in table:
        values = (table[f"{scorer}/passed"].astype(float) == 1.0).astype(float)
    else:
        return None
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def strict_instruction_accuracy(table: pd.DataFrame, scorer: str) -> float | None:
    """IFEval instruction-level strict accuracy: constraints met exactly / all constraints.

    Counted over every answer's constraints (a response with 3 constraints weighs 3), from the
    per-constraint credits in ``<scorer>/detail`` (met exactly when the credit is 1.0). None when
    the scorer writes no such detail.
    """
    if f"{scorer}/detail" not in table:
        return None
    met = total = 0
    for detail in table[f"{scorer}/detail"]:
        if not isinstance(detail, str) or not detail:
            continue
        credits = json.loads(detail)
        if not isinstance(credits, dict):
            return None
        met += sum(float(v) == 1.0 for v in credits.values())
        total += len(credits)
    return met / total if total else None


def pass_rates(table: pd.DataFrame, detail_col: str) -> dict[str, float]:
    """Fraction of responses that fully meet each constraint type."""
    hits: dict[str, list[float]] = defaultdict(list)
    for detail, constraints in zip(
        table[detail_col], table.get("constraints", [None] * len(table)), strict=False
    ):
        if not isinstance(detail, str):
            continue
        kinds = {}
        if isinstance(constraints, str):
            kinds = {c["id"]: c["type"] for c in json.loads(constraints)}
        for cid, score in json.loads(detail).items():
            hits[kinds.get(cid, cid)].append(float(score == 1))
    return {k: float(np.mean(v)) for k, v in sorted(hits.items())}
