"""The training engine: the shared-prompt layout's numerics, the sampler (global batches,
sharding, exact resume), the reference cache, accumulation, checkpoints that transformers loads,
kill-and-resume, and the trainer presets."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sweetspot.cache import StageCache
from sweetspot.config import validate
from sweetspot.errors import ConfigError
from sweetspot.models import Policy, load_causal_lm
from sweetspot.training import logprobs, train
from sweetspot.training.config import LoraOptions, TrainerConfig
from sweetspot.training.data import (
    COLLATE,
    BatchDataset,
    EpochBatchSampler,
    TokenizedPair,
    collate,
    collate_prefix,
    collate_shared,
    plan_batches,
    tokenize_pairs,
)
from sweetspot.training.losses import DPOLoss
from tests.train_worker import synthetic_pairs

REPO = Path(__file__).resolve().parents[1]
EXTRAS = {"chosen_reward": 1.0, "rejected_reward": 0.0, "weight": 1.0, "route_sft": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_policy) -> tuple[StageCache, Policy]:
    """The tiny policy (conftest) and this module's own stage cache for reference log-probs."""
    return StageCache(tmp_path_factory.mktemp("train-cache")), tiny_policy()


def random_pairs(n: int, seed: int = 0, vocab: int = 256) -> list[TokenizedPair]:
    g = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        size = int(torch.randint(low, high, (1,), generator=g))
        return torch.randint(3, vocab, (size,), generator=g).tolist()

    pairs = [TokenizedPair(ids(1, 24), ids(1, 30), ids(1, 30), dict(EXTRAS)) for _ in range(n)]
    pairs[0].chosen, pairs[1].rejected = pairs[0].chosen[:1], pairs[1].rejected[:1]  # 1 token
    return pairs


# --- the shared-prompt layout ----------------------------------------------------------------


def test_collate_shared_layout_by_hand() -> None:
    pair = TokenizedPair([10, 11, 12], [20, 21], [30, 31, 32], dict(EXTRAS))
    short = TokenizedPair([10], [40], [50], dict(EXTRAS))
    batch = collate_shared([pair, short], pad_id=0)
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 20, 21, 30, 31, 32]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]
    assert batch["segment"][0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert batch["input_ids"][1].tolist() == [10, 40, 50, 0, 0, 0, 0, 0]
    assert batch["segment"][1].tolist() == [0, 1, 2, -1, -1, -1, -1, -1]
    first = batch["score_row"] == 0
    # chosen from positions 2, 3; rejected's first token from the prompt's end (2), then 5, 6
    assert batch["score_src"][first].tolist() == [2, 3, 2, 5, 6]
    assert batch["score_target"][first].tolist() == [20, 21, 30, 31, 32]
    assert batch["score_slot"][first].tolist() == [0, 0, 2, 2, 2]
    mask = logprobs.shared_prompt_mask(batch["segment"], "sdpa", torch.float32)[0, 0].int()
    assert mask[5].tolist() == [1, 1, 1, 0, 0, 1, 0, 0]  # rejected sees prompt, not chosen
    assert mask[4].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_collate_prefix_layout_by_hand() -> None:
    pair = TokenizedPair([10, 11, 12], [20, 21], [30, 31, 32], dict(EXTRAS))
    short = TokenizedPair([10], [40], [50], dict(EXTRAS))
    batch = collate_prefix([pair, short], pad_id=0)
    assert batch["prompt_ids"].tolist() == [[10, 11, 12], [10, 0, 0]]
    assert batch["completion_ids"].tolist() == [[20, 21, 0], [40, 0, 0], [30, 31, 32], [50, 0, 0]]
    assert batch["position_ids"][2].tolist() == [3, 4, 5] and batch["position_ids"][3][0] == 1
    assert batch["completion_attention"][1].tolist() == [1, 0, 0, 1, 0, 0]  # prompt pad hidden
    # first tokens from the prompts' last positions; the rest from the position before them
    assert batch["first_row"].tolist() == [0, 0, 1, 1]
    assert batch["first_col"].tolist() == [2, 2, 0, 0]
    assert batch["first_slot"].tolist() == [0, 2, 1, 3]
    assert batch["rest_row"].tolist() == [0, 2, 2] and batch["rest_col"].tolist() == [0, 0, 1]
    assert batch["rest_target"].tolist() == [21, 31, 32]


@pytest.mark.parametrize("layout", ["shared", "prefix"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_layouts_match_stacked(tiny, attention: str, layout: str) -> None:
    """Same log-probs and gradients as the plain stacked computation (float32)."""
    _, policy = tiny
    model = load_causal_lm(policy.path, policy.spec)
    model.config._attn_implementation = attention
    pairs = random_pairs(7)
    weights = torch.randn(14, generator=torch.Generator().manual_seed(3))

    def run(batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        values = logprobs.batch_logps(model, batch)
        (values * weights).sum().backward()
        return values.detach(), [p.grad.clone() for p in model.parameters()]

    stacked, g_stacked = run(collate(pairs, 0))
    shared, g_shared = run(COLLATE[layout](pairs, 0))
    lengths = torch.tensor([len(p.chosen) for p in pairs] + [len(p.rejected) for p in pairs])
    # the sums agree to float32 rounding; per token (the mean) to 1e-6
    torch.testing.assert_close(shared, stacked, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(shared / lengths, stacked / lengths, rtol=0, atol=1e-6)
    for a, b in zip(g_shared, g_stacked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_head_in_chunks_matches_one_pass(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _, policy = tiny
    model = load_causal_lm(policy.path, policy.spec)
    batch = collate_shared(random_pairs(5), 0)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        values = logprobs.batch_logps(model, batch)
        values.sum().backward()
        return values.detach(), model.get_output_embeddings().weight.grad.clone()

    one_values, one_grad = run()
    monkeypatch.setattr(logprobs, "HEAD_CHUNK_ELEMENTS", 7 * model.config.vocab_size)
    chunked_values, chunked_grad = run()
    torch.testing.assert_close(chunked_values, one_values, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(chunked_grad, one_grad, rtol=1e-4, atol=1e-5)


# --- the sampler -----------------------------------------------------------------------------


def collect(sampler: EpochBatchSampler) -> list[tuple[tuple[int, ...], float]]:
    return [(key.indices, key.loss_scale) for key in sampler]


def test_sampler_shards_the_global_batches() -> None:
    lengths = [5, 3, 9, 1, 7, 2, 8, 6, 4, 10, 11]  # 11 pairs
    one = EpochBatchSampler(lengths, 4, False, seed=1, world=lambda: (0, 1))
    ranks = [EpochBatchSampler(lengths, 2, False, seed=1, world=lambda r=r: (r, 2)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 3
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        whole = collect(one)
        shards = [collect(s) for s in ranks]
        for step, (indices, scale) in enumerate(whole):
            assert scale == 1.0
            assert sorted(shards[0][step][0] + shards[1][step][0]) == sorted(indices)
            for r in (0, 1):  # the scaled shard losses average to the global mean
                shard, scale = shards[r][step]
                assert scale == len(shard) * 2 / len(indices)
    many = EpochBatchSampler(list(range(40)), 2, False, seed=1, world=lambda: (0, 1))
    orders = []
    for epoch in (0, 1, 0):
        many.set_epoch(epoch)
        orders.append(collect(many))
    assert orders[0] != orders[1] and orders[0] == orders[2]  # each epoch its own order


def test_sampler_keeps_order_and_merges_a_tiny_tail() -> None:
    """9 pairs, global batches of 4: the last global batch (1 pair) cannot feed 2 processes, so
    it joins the one before; unequal shards get the loss scale that keeps the global mean."""
    ranks = [EpochBatchSampler([1] * 9, 2, True, seed=0, world=lambda r=r: (r, 2)) for r in (0, 1)]
    assert collect(ranks[0]) == [((0, 2), 1.0), ((4, 6, 8), 1.2)]
    assert collect(ranks[1]) == [((1, 3), 1.0), ((5, 7), 0.8)]


def test_sampler_resume_skips_what_was_consumed() -> None:
    s = EpochBatchSampler(list(range(20)), 3, False, seed=4, world=lambda: (0, 1))
    s.set_epoch(2)
    full = collect(s)
    s.resume(2, 3)
    assert collect(s) == full[3:]
    assert collect(s) == full  # the skip applies once
    s.resume(2, len(full))  # saved at the end of epoch 2: epoch 3 from its start
    s3 = EpochBatchSampler(list(range(20)), 3, False, seed=4, world=lambda: (0, 1))
    s3.set_epoch(3)
    assert s.epoch == 3 and collect(s) == collect(s3)


# --- reference cache -------------------------------------------------------------------------


def test_reference_logps_are_reused_from_the_cache(tiny, monkeypatch, tmp_path: Path) -> None:
    _, policy = tiny
    cache = StageCache(tmp_path / "cache")
    cfg = TrainerConfig(ref_batch_size=3)
    pairs, _ = tokenize_pairs(synthetic_pairs(7), policy.tokenizer, 256, 128)
    first, reused = train.cached_reference_logps(cache, policy, pairs, cfg, layout="shared")
    assert not reused
    entries = list((cache.root / "reference").glob("*/reference.parquet"))
    assert len(entries) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the reference pass ran again")

    monkeypatch.setattr(train, "reference_logps", fail)
    again, reused = train.cached_reference_logps(cache, policy, pairs, cfg, layout="stacked")
    assert reused and (again == first).all()
    # other pairs are another entry (and would need a pass)
    with pytest.raises(AssertionError, match="ran again"):
        train.cached_reference_logps(cache, policy, pairs[:-1], cfg)
    # the cached values are the reference model's summed completion log-probs
    model = load_causal_lm(policy.path, policy.spec).eval()
    with torch.no_grad():
        direct = logprobs.batch_logps(model, collate(pairs, policy.tokenizer.pad_token_id))
    torch.testing.assert_close(
        torch.tensor(first.T.reshape(-1), dtype=torch.float32), direct, rtol=1e-6, atol=1e-4
    )


# --- training runs ---------------------------------------------------------------------------


def run_training(tiny, out: Path, **overrides) -> dict:
    cache, policy = tiny
    data = overrides.pop("data", None)
    keep_order = overrides.pop("keep_order", False)
    settings = {"batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "checkpoint_every_n_steps": 0,
                "epochs": 1}  # one pass over the synthetic pairs (the CLI default trains 2)
    settings.update(overrides)
    cfg = TrainerConfig(**settings)
    data = synthetic_pairs(12) if data is None else data
    return train.train_policy(
        data, policy, cfg, DPOLoss(beta=0.1), cache, out, [], keep_order=keep_order
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_grad_accum_equals_the_larger_batch(tiny, tmp_path: Path) -> None:
    full = LoraOptions(enabled=False)
    a = run_training(tiny, tmp_path / "a", batch_size=2, grad_accum=2, lora=full, keep_order=True)
    b = run_training(tiny, tmp_path / "b", batch_size=4, grad_accum=1, lora=full, keep_order=True)
    assert a["train/steps"] == b["train/steps"] == 3
    wa, wb = weights(tmp_path / "a" / "checkpoint"), weights(tmp_path / "b" / "checkpoint")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-5)


def test_checkpoints_load_with_transformers(tiny, tmp_path: Path) -> None:
    """LoRA: the adapter (transformers loads it onto its base) and the merged weights give the
    same model; full fine-tuning: plain weights that moved."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    _, policy = tiny
    run_training(tiny, tmp_path / "adapter", save="adapter")
    run_training(tiny, tmp_path / "merged", save="merged")
    assert (tmp_path / "adapter" / "checkpoint" / "adapter_config.json").is_file()
    assert not (tmp_path / "merged" / "checkpoint" / "adapter_config.json").exists()
    ids = torch.tensor([[5, 60, 70, 80, 90, 100]])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "checkpoint")
    via_transformers = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter" / "checkpoint")
    via_peft = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter" / "checkpoint")
    base = load_causal_lm(policy.path, policy.spec)
    with torch.no_grad():
        want = merged(ids).logits
        torch.testing.assert_close(via_transformers(ids).logits, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(via_peft(ids).logits, want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(base(ids).logits, want, atol=1e-4)  # training changed it

    run_training(tiny, tmp_path / "full", lora=LoraOptions(enabled=False))
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "checkpoint")
    moved = [
        not torch.equal(p, q)
        for p, q in zip(full.parameters(), base.parameters(), strict=True)
    ]
    assert all(moved)


def test_every_layout_trains_alike(tiny, tmp_path: Path) -> None:
    runs = {
        layout: run_training(tiny, tmp_path / layout, layout=layout, keep_order=True)
        for layout in ("stacked", "shared", "prefix")
    }
    for layout, metrics in runs.items():
        assert metrics[f"train/layout_{layout}"]
        assert metrics["train/loss"] == pytest.approx(runs["stacked"]["train/loss"], abs=1e-5)
    auto = run_training(tiny, tmp_path / "auto", layout="auto", keep_order=True)
    assert sum(auto[f"train/layout_{k}"] for k in runs) == 1


def test_layout_falls_back_where_it_cannot_apply(tiny) -> None:
    _, policy = tiny
    model = load_causal_lm(policy.path, policy.spec)
    pairs = random_pairs(4)
    assert train.resolve_layout(TrainerConfig(layout="prefix"), model, pairs) == "prefix"
    checkpointing = TrainerConfig(layout="prefix", gradient_checkpointing=True)
    assert train.resolve_layout(checkpointing, model, pairs) == "stacked"
    model.config._attn_implementation = "flash_attention_2"
    assert train.resolve_layout(TrainerConfig(layout="auto"), model, pairs) == "stacked"


def worker(out: Path, cache: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train_worker", "--out", str(out), "--cache", str(cache),
         *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def test_resume_after_sigkill_gives_the_same_weights(tmp_path: Path) -> None:
    """Two epochs of 6 batches, a checkpoint every 4 steps, SIGKILL during step 9 (epoch 2,
    after the checkpoint at step 8): the rerun resumes mid-epoch and ends where an
    uninterrupted run ends, to the bit. (Lightning alone would replay epoch 2 from its start.)"""
    cache = tmp_path / "cache"
    common = ("--epochs", "2", "--ckpt-every", "4", "--pairs", "24")
    finish(worker(tmp_path / "whole", cache, *common))
    killed = worker(tmp_path / "killed", cache, *common, "--pause-after-step", "9")
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "paused").exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (tmp_path / "killed" / "partial" / "lightning" / "last.ckpt").is_file()
    assert not (tmp_path / "killed" / "checkpoint").exists()
    finish(worker(tmp_path / "killed", cache, *common))

    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert resumed["metrics"]["train/resumed"] and not whole["metrics"]["train/resumed"]
    assert resumed["metrics"]["train/steps"] == whole["metrics"]["train/steps"] == 12
    assert resumed["losses"] == whole["losses"][8:]  # steps 9..12, the same batches
    a, b = weights(tmp_path / "whole" / "checkpoint"), weights(tmp_path / "killed" / "checkpoint")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


# --- presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, accelerator, strategy, precision",
    [
        ("cpu", "cpu", "auto", "32-true"),
        ("gpu", "gpu", "auto", "bf16-mixed"),
        ("ddp", "gpu", "ddp", "bf16-mixed"),
        ("fsdp", "gpu", "fsdp", "bf16-mixed"),
    ],
)
def test_trainer_presets(make_cfg, preset, accelerator, strategy, precision) -> None:
    trainer = validate(make_cfg(f"trainer={preset}")).trainer
    assert (trainer.accelerator, trainer.strategy, trainer.precision) == (
        accelerator,
        strategy,
        precision,
    )
    cpu = validate(make_cfg("trainer=cpu")).trainer
    assert (trainer.lr, trainer.batch_size, trainer.lora) == (cpu.lr, cpu.batch_size, cpu.lora)


def test_deepspeed_preset_names_the_install(make_cfg) -> None:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(ConfigError, match="pip install deepspeed") as err:
        validate(make_cfg("trainer=deepspeed"))
    assert err.value.field == "trainer.strategy"


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["trainer=fsdp", "trainer.accelerator=cpu"], "trainer.strategy"),
        (["trainer.layout=packed"], "trainer.layout"),
        (["trainer.precision=bf16"], "trainer.precision"),
        (["trainer.save=adapter", "trainer.lora.enabled=false"], "trainer.save"),
    ],
)
def test_trainer_config_errors(make_cfg, overrides, field) -> None:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert err.value.field == field


def test_ddp_on_cpu_overrides_validate(make_cfg) -> None:
    trainer = validate(
        make_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "trainer.precision=32-true")
    ).trainer
    assert (trainer.strategy, trainer.devices, trainer.accelerator) == ("ddp", 2, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_preset_trains_in_bf16(tiny, tmp_path: Path) -> None:
    metrics = run_training(tiny, tmp_path / "gpu", accelerator="gpu", precision="bf16-mixed")
    assert metrics["train/steps"] == 3 and math.isfinite(metrics["train/loss"])
    assert metrics["train/first_loss"] == pytest.approx(math.log(2), abs=2e-2)


def test_plan_batches_is_unchanged_for_callers() -> None:
    pairs = random_pairs(9)
    batches = plan_batches(pairs, 4, keep_order=False)
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert [len(b) for b in batches] == [4, 4, 1]
    dataset = BatchDataset(pairs, batches, 0)
    assert len(dataset) == 3 and dataset[2]["input_ids"].shape[0] == 2
