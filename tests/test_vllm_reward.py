"""``scorer=reward_model_vllm``: vLLM's pooling runner as the reward model's engine.

Without a GPU the pure parts are tested: the requests (the exact token ids the transformers
backend scores, cut at ``max_length``), the parsing of ``LLM.classify``'s outputs (label choice,
non-finite values, order), the config, and the message when vLLM is missing. Outputs are built
as vLLM's ``ClassificationRequestOutput`` is shaped (``prompt_token_ids``, ``outputs.probs``).
The real engine is the ``gpu`` test: it scores the tiny reward model with vLLM and compares with
the transformers scorer.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sweetspot.config import build_node
from sweetspot.errors import ConfigError, SweetspotError
from sweetspot.scoring.reward_model import RewardModelScorer
from sweetspot.scoring.vllm_reward import VLLMRewardScorer, build_requests, parse_outputs
from tests.test_scorers import RESPONSES


def output(ids: list[int], values: list[float]) -> SimpleNamespace:
    """What ``LLM.classify`` returns per prompt: its tokens and the head's values."""
    return SimpleNamespace(prompt_token_ids=ids, outputs=SimpleNamespace(probs=values))


def test_requests_are_the_transformers_backends_tokens(tiny_reward_model) -> None:
    path = tiny_reward_model()
    hf = RewardModelScorer(name_or_path=str(path), max_length=24)
    _, tok = hf.load()
    ids = tok(hf.format(RESPONSES), add_special_tokens=False)["input_ids"]
    requests, truncated = build_requests(ids, 24)
    assert truncated == sum(len(x) > 24 for x in ids) > 0
    assert [r["prompt_token_ids"] for r in requests] == [x[:24] for x in ids]
    hf.score(RESPONSES)  # the same count of cut rows as the transformers scorer reports
    assert hf.last_stats["truncated"] == truncated


def test_outputs_parse_in_order_with_the_chosen_label() -> None:
    requests = [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]},
                {"prompt_token_ids": [4, 5, 6]}]
    one = [output([1, 2], [0.5]), output([3], [-2.0]), output([4, 5, 6], [float("inf")])]
    scores, bad = parse_outputs(requests, one, None, "rm")
    np.testing.assert_array_equal(scores, [0.5, -2.0, np.nan])
    assert bad == 1
    two = [output([1, 2], [0.1, 0.7]), output([3], [0.2, -0.3]), output([4, 5, 6], [9.0, 1.0])]
    assert list(parse_outputs(requests, two, 1, "rm")[0]) == [0.7, -0.3, 1.0]
    with pytest.raises(SweetspotError, match="2 outputs; set scorer label_index"):
        parse_outputs(requests, two, None, "rm")
    with pytest.raises(SweetspotError, match="label_index 2 is out of range"):
        parse_outputs(requests, two, 2, "rm")
    with pytest.raises(SweetspotError, match="output 1 belongs to another request"):
        parse_outputs(requests, [one[0], one[2], one[1]], None, "rm")
    with pytest.raises(SweetspotError, match="2 outputs for 3 requests"):
        parse_outputs(requests, one[:2], None, "rm")


def test_config_engine_arguments_and_missing_vllm(tiny_reward_model, make_cfg) -> None:
    node = make_cfg("scorer=reward_model_vllm",
                    f"scorer.name_or_path={tiny_reward_model()}").scorer
    scorer = build_node(node, "scorer")
    assert isinstance(scorer, VLLMRewardScorer) and scorer.shard_size() == 64
    args = scorer.engine_args("/m")
    assert args["runner"] == "pooling" and args["dtype"] == "auto"
    assert "trust_remote_code" not in args
    node.dtype = "float64"
    with pytest.raises(ConfigError, match="dtype"):
        build_node(node, "scorer")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(SweetspotError, match=r"needs vLLM.*sweetspot\[vllm\]"):
            scorer.score(RESPONSES)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                    reason="needs a CUDA GPU and vllm installed")
def test_vllm_scores_equal_the_transformers_backend(tiny_reward_model) -> None:
    path = str(tiny_reward_model())
    want = RewardModelScorer(name_or_path=path, device="cpu").score(RESPONSES)
    scorer = VLLMRewardScorer(name_or_path=path, dtype="float32", gpu_memory_utilization=0.2,
                              enforce_eager=True)
    got = scorer.score(RESPONSES)
    assert list(got.index) == list(RESPONSES.index)
    np.testing.assert_allclose(got["score/reward_model"], want["score/reward_model"],
                               rtol=1e-3, atol=1e-3)
    assert list(got["reward_model/num_tokens"]) == list(want["reward_model/num_tokens"])
