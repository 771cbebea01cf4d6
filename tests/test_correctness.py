"""Correctness fixes of issue 12, each checked against an independent computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweetspot.evaluation.evaluate import Evaluator, response_logps
from sweetspot.models import ModelSpec, Policy, TinyModelShape, build_tiny_model
from sweetspot.sampling.hf import GenerationSettings
from sweetspot.scoring.reward_model import RewardModelScorer
from sweetspot.selection.augment import AugmentOptions
from sweetspot.stage_keys import stage_keys
from tests.conftest import save_reward_model
from tests.test_cache_keys import compose_cfg
from tests.test_scorers import unbatched_reward

# ---------------------------------------------------------------------------------------------
# 2. Reward-augmented evaluation: only the trained policy's generation is conditioned.

PROMPTS = pd.DataFrame({
    "prompt_id": ["t0", "h0", "h1", "h2"],
    "prompt": ["Say hi.", "Name a colour.", "Count to three.", "What is rain?"],
    "split": ["train", "heldout", "heldout", "heldout"],
})


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    folder = tmp_path_factory.mktemp("policy")
    build_tiny_model(TinyModelShape(hidden_size=32, intermediate_size=64), folder)
    return Policy(ModelSpec(source="hf", name_or_path=str(folder)), str(folder))


def direct_answers(policy: Policy, system: str | None) -> list[str]:
    """Independent: generate from hand-built message lists, the system turn first when given."""
    held = PROMPTS[PROMPTS["split"] == "heldout"]
    convos = [([{"role": "system", "content": system}] if system else [])
              + [{"role": "user", "content": p}] for p in held["prompt"]]
    frame = pd.DataFrame({"prompt_id": held["prompt_id"].to_numpy(), "prompt": convos})
    settings = GenerationSettings(n=1, seed=0, max_new_tokens=6, temperature=1.0,
                                  overlong="truncate")
    return list(settings.generate(frame, policy).sort_values("prompt_id")["response"])


def test_augmented_evaluation_conditions_only_the_generation(policy: Policy,
                                                             tmp_path: Path) -> None:
    system = AugmentOptions().eval_system_prompt()
    ev = Evaluator(max_new_tokens=6, seed=0, greedy=False, temperature=1.0)  # seeded samples
    held = ev.prompts(PROMPTS)
    conditioned = ev.answer(held, policy, system).sort_values("prompt_id")
    plain = ev.answer(held, policy).sort_values("prompt_id")
    # generation: conditioned on the target score for the trained policy, plain otherwise
    assert list(conditioned["response"]) == direct_answers(policy, system)
    assert list(plain["response"]) == direct_answers(policy, None)
    assert list(conditioned["response"]) != list(plain["response"])  # the condition mattered
    # the scored conversation is the user's request only, in both tables
    for table in (conditioned, plain):
        assert "system_prompt" not in table
        assert [m["role"] for msgs in table["prompt"] for m in msgs] == ["user"] * 3
    # a reward model scores (plain prompt, answer): compared with an unbatched forward over
    # hand-built [user, assistant] conversations
    rm = save_reward_model(tmp_path / "rm")
    scores = RewardModelScorer(name_or_path=str(rm)).score(conditioned)
    expected = unbatched_reward(rm, conditioned.assign(prompt=list(held.sort_values(
        "prompt_id")["prompt"].map(lambda m: m[0]["content"]))))
    np.testing.assert_allclose(scores["score/reward_model"].to_numpy(), expected, rtol=1e-5,
                               atol=1e-5)
    # the KL log-probs are taken where the policy answered: with the system turn
    by_hand = conditioned.assign(prompt=[[{"role": "system", "content": system}, *m]
                                         for m in conditioned["prompt"]]).drop(
        columns=["generation_system_prompt"])
    np.testing.assert_allclose(response_logps(policy.model, policy.tokenizer, conditioned, 2),
                               response_logps(policy.model, policy.tokenizer, by_hand, 3),
                               rtol=1e-5)


def test_reference_answers_are_shared_with_the_plain_run() -> None:
    augmented = stage_keys(compose_cfg("logger=csv", "selection=augment"))
    plain = stage_keys(compose_cfg("logger=csv", "selection=sweet_spot"))
    assert augmented["answers_reference"] == plain["answers_reference"]
    assert augmented["answers_trained"] != plain["answers_trained"]


# ---------------------------------------------------------------------------------------------
# 6. Prompts with no responses are counted, not dropped silently.


def test_prompts_without_responses_are_counted() -> None:
    from sweetspot.pipeline import select_counts, selection_input
    from sweetspot.selection.positions import Positions

    rows = [  # (prompt, sample, response, reward)
        ("a", 0, "x", 0.1), ("a", 1, "y", 0.9), ("a", 2, "z", 0.5),   # a pair
        ("b", 0, None, np.nan), ("b", 1, None, np.nan),              # sampler skipped it
        ("c", 0, "u", 0.3), ("c", 1, "v", 0.3),                      # sigma = 0
        ("d", 0, "w", 0.7), ("d", 1, None, np.nan),                  # one response left
        ("e", 0, None, np.nan),                                      # skipped too
    ]
    denoised = pd.DataFrame(rows, columns=["prompt_id", "sample_id", "response", "reward"])
    denoised["reward_denoised"] = denoised["reward"]
    result = Positions(chosen="max", rejected="min").select(selection_input(denoised))
    counts = select_counts(denoised, result, len(result.pairs))
    assert counts["prompts"] == 5 and counts["pairs"] == 1
    skipped = {k.removeprefix("skipped/"): v for k, v in counts.items()
               if k.startswith("skipped/")}
    assert skipped == {"no_responses": 2, "zero_sigma": 1, "too_few_responses": 1}
    assert counts["pairs"] + sum(skipped.values()) == counts["prompts"]


# ---------------------------------------------------------------------------------------------
# 5. RPCA on reward-derived matrices leaves clean, complete data alone.


def reward_frame(rewards: np.ndarray) -> pd.DataFrame:
    P, n = rewards.shape
    return pd.DataFrame({"prompt_id": np.repeat([f"p{i:03d}" for i in range(P)], n),
                         "sample_id": np.tile(np.arange(n), P),
                         "response": [f"text {k}" for k in range(P * n)],
                         "reward": rewards.ravel()})


@pytest.mark.parametrize("kind", ["t2", "discrete"])
def test_rpca_on_clean_complete_rewards_selects_as_none(kind: str) -> None:
    from scipy.stats import kendalltau

    from sweetspot.denoising.none import NoDenoiser
    from sweetspot.denoising.rpca import RPCADenoiser
    from sweetspot.pipeline import selection_input
    from sweetspot.selection.positions import Positions

    rng = np.random.default_rng(3)
    rewards = (rng.standard_t(2, size=(120, 16)) if kind == "t2"  # heavy tails: outliers
               else rng.integers(0, 5, size=(120, 16)) / 4)      # ties, like the rules scorer
    df = reward_frame(rewards)
    plain = NoDenoiser().denoise(df).responses
    rpca = RPCADenoiser().denoise(df).responses
    assert (rpca["reward_denoised"].to_numpy() == df["reward"].to_numpy()).all()
    for chosen, rejected in (("max", "mu-2sigma"), ("mu+sigma", "mu-sigma"), ("max", "min")):
        strategy = Positions(chosen=chosen, rejected=rejected)
        a = strategy.select(selection_input(plain)).pairs
        b = strategy.select(selection_input(rpca)).pairs
        cols = ["prompt_id", "chosen_sample_id", "rejected_sample_id", "margin"]
        pd.testing.assert_frame_equal(a[cols], b[cols])

    # corrupted comparisons are still repaired: rank agreement with the clean rewards, computed
    # here with scipy per prompt, rises well above the corrupted matrix's row means
    if kind == "t2":
        result = RPCADenoiser(corrupt=0.1, seed=1).denoise(df).responses
        control = RPCADenoiser(corrupt=0.1, seed=1, solver="none").denoise(df).responses

        def mean_tau(frame: pd.DataFrame) -> float:
            return float(np.mean([kendalltau(g["reward"], g["reward_denoised"]).statistic
                                  for _, g in frame.groupby("prompt_id")]))

        assert mean_tau(control) < 0.87 and mean_tau(result) > 0.95


# ---------------------------------------------------------------------------------------------
# 3 and 9. Presets carry the papers' settings.

PAPER_BETA = {"sweet_spot_scaling": 0.01, "position_grid": 0.01, "reward_augmented": 0.01,
              "small_margin": 0.01}  # Xiao et al., Xiao et al., Zhang et al., MixDPO


@pytest.mark.parametrize("study", sorted(PAPER_BETA))
def test_presets_use_the_papers_beta(study: str) -> None:
    from sweetspot.config import validate
    from tests.test_experiments import sweep_of

    sweep = sweep_of(study)
    assert not any(k.startswith("loss.") for k in sweep)  # no job overrides it
    for loss in sweep.get("loss", ["dpo"]):
        cfg = compose_cfg(f"experiment={study}", f"loss={loss}")
        assert validate(cfg).loss.beta == PAPER_BETA[study]


def test_mixdpo_preset_is_the_published_recipe() -> None:
    from sweetspot.config import validate
    from sweetspot.pipeline import selection_input
    from tests.test_experiments import sweep_of

    assert set(sweep_of("small_margin")["selection"]) == {"mixdpo", "routing", "max_min"}
    plan = validate(compose_cfg("experiment=small_margin", "selection=mixdpo", "loss=hybrid"))
    assert (plan.loss.beta, plan.loss.label_smoothing) == (0.01, 0.1)  # MixDPO's values
    assert plan.selection.curriculum and plan.selection.keep_order    # no shuffling
    shuffled = validate(compose_cfg("experiment=small_margin", "selection=routing")).selection
    assert not shuffled.keep_order
    # easy to hard: the training order is the margin, descending (sorted here by hand)
    rng = np.random.default_rng(0)
    df = reward_frame(rng.normal(scale=0.2, size=(30, 6)))
    df["reward_denoised"] = df["reward"]
    pairs = plan.selection.select(selection_input(df)).pairs.sort_values("order")
    margins = pairs["margin"].to_numpy()
    assert list(margins) == sorted(margins, reverse=True)
    assert set(pairs["route"]) == {"sft", "dpo"}  # both routes occur at threshold 0.5
    by_hand = sorted((g["reward"].max() - g["reward"].min(), p) for p, g in df.groupby(
        "prompt_id"))[::-1]
    assert list(pairs["prompt_id"]) == [p for _, p in by_hand]
