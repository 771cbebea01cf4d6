"""selection=influence: TIF against finite differences of the validation loss, the proxies
(LossDiff, IRM, LossDiff-IRM) against a hand-written Adam step, the band selection, and the
study preset (its arms, equal pair counts, and the sample/score stages it shares with
sweet_spot_scaling).

The independent computations here use the model's own logits (log_softmax + gather), float64
weights, token ids built directly from the chat template, and a hand-written DPO loss and Adam
step: nothing from ``sweetspot.training`` or the module under test."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.stats import rankdata, spearmanr

from sweetspot.config import config_dir, validate
from sweetspot.errors import DataError
from sweetspot.models import ModelSpec, Policy
from sweetspot.selection.base import ModelInputs
from sweetspot.selection.influence import SPLIT, Influence, influence_scores
from sweetspot.stage_keys import stage_keys
from sweetspot.training.config import LoraOptions, TrainerConfig

BETA = 0.1
SEED = 3
WORDS = ["red", "blue", "green", "sun", "moon", "tree", "river", "stone"]


def pair_texts(n: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i in range(n):
        w = rng.choice(WORDS, size=6)
        rows.append({"prompt": [{"role": "user", "content": f"say {w[0]} {i}"}],
                     "chosen": f"{w[1]} {w[2]} {w[3]}", "rejected": f"{w[4]} {w[5]}"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def setup(tiny_lm_dir) -> dict:
    path = str(tiny_lm_dir(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           init_seed=1))
    policy = Policy(ModelSpec(source="hf", name_or_path=path), path)
    trainer = TrainerConfig(max_length=96, max_prompt_length=48,
                            lora=LoraOptions(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    rng = np.random.default_rng(0)
    val = pair_texts(3, rng)
    # candidates: two fresh pairs, two validation pairs and two of them reversed (harmful)
    flipped = val.iloc[:2].rename(columns={"chosen": "rejected", "rejected": "chosen"})
    cand = pd.concat([pair_texts(2, rng), val.iloc[1:], flipped], ignore_index=True)
    return {"policy": policy, "trainer": trainer, "cand": cand, "val": val}


class Reference:
    """The same start (fresh LoRA adapters seeded like the scorer's) in float64, with its own
    tokens, log-probs, DPO loss, gradients and parameter updates."""

    def __init__(self, setup: dict):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        policy, lora = setup["policy"], setup["trainer"].lora
        self.tok = policy.tokenizer
        base = AutoModelForCausalLM.from_pretrained(policy.path)
        torch.manual_seed(SEED)
        model = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                lora_dropout=0.0,
                                                target_modules=list(lora.target_modules),
                                                task_type="CAUSAL_LM"))
        self.model = model.double().eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.start = [p.detach().clone() for p in self.params]

    def ids(self, rec: dict, key: str) -> tuple[torch.Tensor, int]:
        text = self.tok.apply_chat_template(rec["prompt"], add_generation_prompt=True,
                                            tokenize=False)
        prompt = self.tok(text, add_special_tokens=False)["input_ids"]
        reply = self.tok(rec[key], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return torch.tensor([prompt + reply]), len(prompt)

    def logp(self, rec: dict, key: str) -> torch.Tensor:
        ids, n_prompt = self.ids(rec, key)
        logits = self.model(input_ids=ids).logits[0, :-1].double()
        token = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        return token[n_prompt - 1:].sum()

    def loss(self, rec: dict, ref: tuple[float, float]) -> torch.Tensor:
        margin = (self.logp(rec, "chosen") - ref[0]) - (self.logp(rec, "rejected") - ref[1])
        return torch.nn.functional.softplus(-BETA * margin)

    def logps(self, frame: pd.DataFrame) -> list[tuple[float, float]]:
        with torch.no_grad():
            return [(float(self.logp(r, "chosen")), float(self.logp(r, "rejected")))
                    for r in frame.to_dict("records")]

    def grad(self, frame: pd.DataFrame, ref: list) -> list[torch.Tensor]:
        recs = frame.to_dict("records")
        total = sum(self.loss(r, ref[i]) for i, r in enumerate(recs)) / len(recs)
        return list(torch.autograd.grad(total, self.params))

    def move(self, steps: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, p0, d in zip(self.params, self.start, steps, strict=True):
                p.copy_(p0 - d)


def scorer_output(setup: dict, **options: float) -> pd.DataFrame:
    settings = Influence(beta=BETA, **options)
    inputs = ModelInputs(policy=setup["policy"], trainer=setup["trainer"], seed=SEED)
    return influence_scores(setup["cand"], setup["val"], inputs, settings)


def test_tif_agrees_with_finite_differences_of_the_validation_loss(setup: dict) -> None:
    """One SGD step of size lr on a single pair z changes validation pair v's loss by D[z, v];
    IF is the mean of D, TIF the mean of D clipped at the 0.5 quantile of |D|."""
    lr, q = 1e-2, 0.5
    out = scorer_output(setup, lr=lr, tif_quantile=q, val_steps=1, irm_steps=1)
    ref = Reference(setup)
    cand, val = setup["cand"], setup["val"]
    ref_c, ref_v = ref.logps(cand), ref.logps(val)
    base = np.array([ref.loss(r, ref_v[j]).item() for j, r in enumerate(val.to_dict("records"))])
    fd = np.zeros((len(cand), len(val)))
    for i in range(len(cand)):
        ref.move([torch.zeros_like(p) for p in ref.params])
        g = ref.grad(cand.iloc[[i]], [ref_c[i]])
        ref.move([lr * gi for gi in g])
        with torch.no_grad():
            after = [ref.loss(r, ref_v[j]).item() for j, r in enumerate(val.to_dict("records"))]
        fd[i] = base - np.array(after)
    want_if = fd.mean(axis=1)
    tau = np.quantile(np.abs(fd), q)
    want_tif = np.clip(fd, -tau, tau).mean(axis=1)
    for got, want in ((out["if_raw"].to_numpy(), want_if), (out["tif"].to_numpy(), want_tif)):
        assert np.all(np.sign(got) == np.sign(want)), (got, want)
        assert spearmanr(got, want).statistic > 0.9, (got, want)
        np.testing.assert_allclose(got, want, rtol=0.05, atol=1e-3 * np.abs(want).max())
    assert len(set(np.sign(want_if))) == 2  # the check covers helpful and harmful pairs


def test_lossdiff_irm_and_their_combination_against_one_adam_step(setup: dict) -> None:
    """With one full-batch Adam step (the first step is lr * g / (|g| + eps), elementwise):
    LossDiff = l(z; theta_0) - l(z; theta_V), IRM = beta * margin under theta_T."""
    val_lr, irm_lr = 5e-3, 7e-3
    out = scorer_output(setup, val_steps=1, val_lr=val_lr, irm_steps=1, irm_lr=irm_lr,
                        irm_batch_size=100)
    ref = Reference(setup)
    cand, val = setup["cand"], setup["val"]
    ref_c, ref_v = ref.logps(cand), ref.logps(val)

    def adam_step(frame: pd.DataFrame, refs: list, step: float) -> None:
        ref.move([torch.zeros_like(p) for p in ref.params])
        g = ref.grad(frame, refs)
        ref.move([step * gi / (gi.abs() + 1e-8) for gi in g])

    adam_step(val, ref_v, val_lr)
    with torch.no_grad():
        lossdiff = [math.log(2) - ref.loss(r, ref_c[i]).item()
                    for i, r in enumerate(cand.to_dict("records"))]
    adam_step(cand, ref_c, irm_lr)
    after = ref.logps(cand)
    irm = [BETA * ((a[0] - b[0]) - (a[1] - b[1])) for a, b in zip(after, ref_c, strict=True)]
    np.testing.assert_allclose(out["lossdiff"], lossdiff, rtol=0.02, atol=1e-6)
    np.testing.assert_allclose(out["irm"], irm, rtol=0.02, atol=1e-6)
    ranks = [(rankdata(x) - 1) / (len(x) - 1) for x in (lossdiff, irm)]
    np.testing.assert_allclose(out["lossdiff_irm"], (ranks[0] + ranks[1]) / 2, atol=1e-9)
    assert np.ptp(out["lossdiff"]) > 0 and np.ptp(out["irm"]) > 0


# -- the band, on a bound strategy (no model) ------------------------------------------------


def responses(prompts: int = 12, n: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame([{"prompt_id": f"p{p}", "sample_id": k, "response": f"r{p}-{k}",
                          "reward": float(rng.normal())}
                         for p in range(prompts) for k in range(n)])


def bound(table: pd.DataFrame, **options: object) -> tuple[Influence, pd.DataFrame]:
    """An Influence strategy bound to hand-made scores: tif = rank of the prompt number."""
    strategy = Influence(validation_fraction=0.25, **options)
    pool, held = strategy.split(table, seed=0)
    cand = strategy.candidate_pairs(pool).pairs
    cand = cand.assign(tif=cand["prompt_id"].str[1:].astype(float))
    for col in ("if_raw", "lossdiff", "irm", "lossdiff_irm", "grad_norm"):
        cand[col] = -cand["tif"]
    val = strategy.candidate_pairs(held).pairs
    scores = pd.concat([cand.assign(**{SPLIT: "candidate"}), val.assign(**{SPLIT: "validation"})])
    return strategy.with_model_scores(scores), cand


def test_bands_keep_equal_counts_at_their_quantiles() -> None:
    table = responses()
    kept = {}
    for band in ("medium", "top", "bottom", "random"):
        strategy, cand = bound(table, band=band, band_width=0.5)
        result = strategy.select(table)
        kept[band] = sorted(result.pairs["tif"])
        assert result.skipped["validation_prompt"] == 3  # 25% of 12 prompts
        assert not set(result.pairs["prompt_id"]) & set(
            strategy._scores.loc[strategy._scores[SPLIT] == "validation", "prompt_id"])
    values = sorted(cand["tif"])  # 9 candidates: 4.5 rounds up, 5 kept by every band
    assert {len(v) for v in kept.values()} == {5}
    assert kept["top"] == values[-5:] and kept["bottom"] == values[:5]
    assert kept["medium"] == values[2:7]  # 4 left out: 2 below, 2 above
    # every score is a column of the pairs table
    assert {"tif", "if_raw", "lossdiff", "irm", "lossdiff_irm"} <= set(result.pairs.columns)
    seeds = [sorted(bound(table, band="random", random_seed=s)[0].select(table)
                    .pairs["prompt_id"]) for s in range(4)]
    assert len({tuple(s) for s in seeds}) > 1  # the random band changes with its seed
    other = bound(table, band="top", band_width=0.5, score="irm")[0].select(table)
    assert sorted(other.pairs["tif"]) == values[:5]  # irm = -tif: its top is tif's bottom


def test_unbound_strategy_and_mismatched_scores_fail_with_the_field() -> None:
    table = responses()
    with pytest.raises(DataError, match="sub-stage"):
        Influence().select(table)
    strategy, _ = bound(table)
    changed = table.assign(reward=table["reward"] * -1.0)  # other pairs than those scored
    with pytest.raises(DataError, match="no influence score"):
        strategy.select(changed)


# -- the study preset ------------------------------------------------------------------------


def compose_preset(name: str, *overrides: str, hydra: bool = False):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", *overrides],
                       return_hydra_config=hydra)


def test_study_preset_arms_share_samples_scores_and_influence() -> None:
    sweep = compose_preset("influence", hydra=True).hydra.sweeper.params
    assert sweep["selection.band"].replace(" ", "") == "medium,top,random"
    assert str(sweep["train_seed"]).replace(" ", "") == "0,1,2"
    scaling = stage_keys(compose_preset("sweet_spot_scaling", "sampler.use_n=16"))
    jobs = {}
    for band in ("medium", "top", "random"):
        for seed in (0, 1):
            cfg = compose_preset("influence", f"selection.band={band}", f"train_seed={seed}")
            plan = validate(cfg)
            assert plan.selection.band_width == 0.5 and plan.selection.score == "tif"
            jobs[band, seed] = stage_keys(cfg, plan)
    for keys in jobs.values():  # the user's cached sweet_spot_scaling samples are reused
        assert all(keys[k] == scaling[k] for k in ("prompts", "sample", "score", "denoise"))
    assert len({k["model_scores"] for k in jobs.values()}) == 1  # one influence stage for all
    # random_seed follows train_seed (a new random half per seed), so each job selects anew
    assert len({k["select"] for k in jobs.values()}) == 6
    tiny = compose_preset("influence_tiny", hydra=True)
    assert tiny.model.source == "tiny"
    assert set(str(tiny.hydra.sweeper.params["selection.band"]).split(",")) == {
        "medium", "top", "random"}


def test_tiny_preset_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sweetspot experiment=influence_tiny``'s medium arm end to end, reduced to the select
    stage (the sweep's other arms differ only in the band the test above checks)."""
    from sweetspot.pipeline import run_pipeline

    monkeypatch.setenv("SWEETSPOT_CACHE", str(tmp_path / "cache"))
    cfg = compose_preset("influence_tiny", "until=select", "logger=none", "task.max_train=8",
                         f"paths.cache_dir={tmp_path / 'cache'}")
    metrics = run_pipeline(copy.deepcopy(cfg), tmp_path / "run")
    pairs = pd.read_parquet(tmp_path / "run" / "pairs.parquet")
    assert metrics["stage/model_scores/reused"] is False
    assert len(pairs) == metrics["select/pairs"] > 0
    assert pairs[["tif", "lossdiff", "irm", "lossdiff_irm"]].notna().all().all()
