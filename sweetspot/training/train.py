"""The train stage, top to bottom: tokenise pairs, reference log-probs (once, cached), LoRA or
full fine-tuning under a Lightning Trainer, exact resume from the last checkpoint,
save_pretrained.

Resume: Lightning restores the weights, optimizer, schedule and loop position from
``last.ckpt``; the loader's own state (epoch, batches consumed) is saved with it, so the sampler
skips the batches the killed run already trained on (see ``data.EpochBatchSampler``) and the
resumed run ends with the weights an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sweetspot.cache import StageCache
from sweetspot.data import read_table, write_table
from sweetspot.distributed import current, lightning_plugins
from sweetspot.models import Policy, load_causal_lm
from sweetspot.training.config import TrainerConfig
from sweetspot.training.data import (
    COLLATE,
    BatchDataset,
    EpochBatchSampler,
    ResumableLoader,
    TokenizedPair,
    pair_length,
    pairs_fingerprint,
    plan_batches,
    tokenize_pairs,
)
from sweetspot.training.logprobs import (
    attention_implementation,
    batch_logps,
    layout_cost,
    supports_prefix,
    supports_shared_prompt,
)
from sweetspot.training.module import PreferenceModule
from sweetspot.training.optim import build_callbacks as build_extra_callbacks

log = logging.getLogger(__name__)

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
CAST = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


def reference_dtype(cfg: TrainerConfig) -> torch.dtype | None:
    """The weights' dtype of the training forward when it is not the loaded one (``*-true``
    precisions cast the model; Lightning casts the policy the same way)."""
    return CAST.get(cfg.precision)


def compute_device(cfg: TrainerConfig) -> torch.device:
    """Where the reference pass runs: the first GPU when the run trains on GPUs."""
    if cfg.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


@torch.no_grad()
def reference_logps(
    model: Any,
    pairs: list[TokenizedPair],
    pad_id: int,
    batch_size: int,
    layout: str = "stacked",
    precision: str = "32-true",
) -> np.ndarray:
    """[P, 2] summed log-probs of (chosen, rejected) under the frozen reference, in length-sorted
    batches (little padding), under the training run's precision."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast = AUTOCAST.get(precision)
    ctx = (
        torch.autocast(device.type, dtype=autocast)
        if autocast is not None
        else contextlib.nullcontext()
    )
    out = np.zeros((len(pairs), 2), dtype=np.float64)
    with ctx:
        for index in plan_batches(pairs, batch_size, keep_order=False, layout=layout):
            batch = COLLATE[layout]([pairs[j] for j in index], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logps = batch_logps(model, batch).double().cpu().numpy()
            out[index, 0] = logps[: len(index)]
            out[index, 1] = logps[len(index) :]
    model.train(was_training)
    return out


def cached_reference_logps(
    cache: StageCache,
    policy: Policy,
    pairs: list[TokenizedPair],
    cfg: TrainerConfig,
    model: Any = None,
    layout: str = "stacked",
) -> tuple[np.ndarray, bool]:
    """Reference log-probs keyed by the reference model, the precision and the tokenised pairs'
    fingerprint: a rerun (another loss, another lr) reads them from the cache entry. ``model``,
    if given, is the untrained policy (loaded anyway) and serves as the reference."""

    dtype = reference_dtype(cfg)

    def compute(ctx: Any) -> dict:
        own = model is None
        ref_model = load_causal_lm(policy.path, policy.spec) if own else model
        home = next(ref_model.parameters()).device
        original = next(ref_model.parameters()).dtype
        ref_model.to(compute_device(cfg), dtype=dtype or original)
        try:
            ref = reference_logps(
                ref_model,
                pairs,
                policy.tokenizer.pad_token_id,
                cfg.ref_batch_size,
                layout,
                cfg.precision,
            )
        finally:
            if not own:
                ref_model.to(home, dtype=original)
        write_table(
            pd.DataFrame(ref, columns=["ref_chosen_logps", "ref_rejected_logps"]),
            ctx.out_dir / "reference.parquet",
        )
        return {"rows": len(pairs)}

    entry = cache.get_or_compute(
        "reference",
        {"model": policy.identity(), "precision": cfg.precision, "weights": str(dtype)},
        [pairs_fingerprint(pairs)],
        compute,
    )
    table = read_table(entry.file("reference.parquet"))
    return table[["ref_chosen_logps", "ref_rejected_logps"]].to_numpy(), entry.reused


def attach_lora(model: Any, cfg: TrainerConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def resolve_layout(cfg: TrainerConfig, model: Any, pairs: list[TokenizedPair]) -> str:
    """``auto``: of the layouts this model and run allow, the one whose batches cost the fewest
    backbone FLOPs for these pairs (see ``logprobs.layout_cost``). A layout asked for by name
    that the model cannot take falls back to stacked, with a warning."""
    allowed = {"stacked"}
    if supports_shared_prompt(model):
        allowed.add("shared")
    if supports_prefix(model) and not cfg.gradient_checkpointing:
        allowed.add("prefix")
    if cfg.layout != "auto":
        if cfg.layout not in allowed:
            log.warning(
                "trainer.layout=%s does not apply here (attention %s, gradient checkpointing "
                "%s): training with the stacked layout",
                cfg.layout,
                attention_implementation(model),
                cfg.gradient_checkpointing,
            )
            return "stacked"
        return cfg.layout
    sizes = [(len(p.prompt), len(p.chosen), len(p.rejected)) for p in pairs]
    cost = {
        layout: layout_cost(
            model,
            [[sizes[i] for i in b] for b in plan_batches(pairs, cfg.batch_size, False, layout)],
            layout,
        )
        for layout in sorted(allowed)
    }
    choice = min(cost, key=cost.get)
    log.info(
        "trainer.layout=auto: %s (estimated cost relative to stacked: %s)",
        choice,
        ", ".join(f"{k} {v / cost['stacked']:.2f}" for k, v in cost.items()),
    )
    return choice


def build_strategy(cfg: TrainerConfig, model: Any) -> Any:
    """``fsdp`` gets the model's decoder layer as its wrapping unit and ``use_orig_params`` (LoRA
    mixes frozen and trainable weights); any other name goes to Lightning as it is."""
    if cfg.strategy != "fsdp":
        return cfg.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = {type(m) for m in model.modules() if type(m).__name__ in names}
    return FSDPStrategy(
        auto_wrap_policy=layers or None,
        use_orig_params=True,
        state_dict_type="full",
        sharding_strategy="FULL_SHARD",
    )


def build_model(policy: Policy, cfg: TrainerConfig) -> Any:
    model = load_causal_lm(policy.path, policy.spec)
    model.config.use_cache = False
    return model


def prepare_for_training(model: Any, cfg: TrainerConfig) -> Any:
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = attach_lora(model, cfg)
    model.train()
    return model


def total_steps(batches_per_epoch: int, cfg: TrainerConfig) -> int:
    """Optimizer steps of the run (what the learning-rate schedule spans): Lightning steps at
    the end of an epoch even when the last accumulation window is short."""
    per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total = per_epoch * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps > 0 else total


@dataclass
class Prepared:
    """What training needs before the Trainer starts: the tokenised pairs, the model (LoRA
    attached), the layout chosen for them and the reference log-probs."""

    pairs: list[TokenizedPair]
    truncation: dict[str, Any]
    model: Any
    layout: str
    ref: np.ndarray
    ref_reused: bool
    ref_seconds: float


def prepare(
    pairs_df: pd.DataFrame,
    policy: Policy,
    cfg: TrainerConfig,
    cache: StageCache,
    reference: Policy | None = None,
) -> Prepared:
    """Tokenise the pairs, load the model, choose the layout, and compute (or reuse) the
    reference log-probs: with the untrained model itself, or ``reference`` when it is another
    model."""
    pairs, trunc = tokenize_pairs(pairs_df, policy.tokenizer, cfg.max_length,
                                  cfg.max_prompt_length)
    if not pairs:
        raise ValueError("no pairs to train on")
    model = build_model(policy, cfg)
    layout = resolve_layout(cfg, model, pairs)
    started = time.perf_counter()
    if reference is None:
        ref, ref_reused = cached_reference_logps(cache, policy, pairs, cfg, model, layout)
    else:
        ref, ref_reused = cached_reference_logps(cache, reference, pairs, cfg, None, layout)
    ref_seconds = time.perf_counter() - started
    model = prepare_for_training(model, cfg)
    return Prepared(pairs, trunc, model, layout, ref, ref_reused, ref_seconds)


def build_callbacks(cfg: TrainerConfig, ckpt_dir: Path) -> list[Any]:
    """The checkpoint callback (every ``checkpoint_every_n_steps``, what a killed run resumes
    from) and the extra callbacks of ``trainer.callbacks``."""
    callbacks: list[Any] = []
    if cfg.checkpoint_every_n_steps > 0:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                every_n_train_steps=cfg.checkpoint_every_n_steps,
                save_last=True,
                save_top_k=0,
            )
        )
    return callbacks + build_extra_callbacks(cfg.callbacks)


def build_trainer(
    cfg: TrainerConfig, model: Any, out_dir: Path, loggers: list, callbacks: list[Any]
) -> L.Trainer:
    """The Lightning Trainer of ``cfg`` (hardware, precision, loop lengths, clipping)."""
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg, model),
        precision=cfg.precision,
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        accumulate_grad_batches=cfg.grad_accum,
        gradient_clip_val=cfg.grad_clip or None,
        log_every_n_steps=cfg.log_every_n_steps,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        default_root_dir=str(out_dir),
        enable_model_summary=False,
        enable_progress_bar=sys.stdout.isatty(),  # a live bar on a terminal, not in logs
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the sampler shards global batches itself
        plugins=lightning_plugins(current()),  # torchrun's or srun's ranks (distributed.py)
    )


def build_loader(
    prepared: Prepared, cfg: TrainerConfig, trainer: L.Trainer, pad_id: int, keep_order: bool
) -> ResumableLoader:
    """Batches by length (or in the strategy's order), each rank its share, resumable: the
    loader's position is saved with Lightning's checkpoints."""
    sampler = EpochBatchSampler(
        [pair_length(p, prepared.layout) for p in prepared.pairs],
        cfg.batch_size,
        keep_order,
        cfg.seed,
        world=lambda: (trainer.global_rank, trainer.world_size),
    )
    dataset = BatchDataset(prepared.pairs, None, pad_id, prepared.ref, prepared.layout)
    loader = ResumableLoader(dataset, sampler)
    progress = trainer.fit_loop.epoch_loop.batch_progress
    loader.progress = lambda: progress.current.processed
    return loader


def resume_path(ckpt_dir: Path, callbacks: list[Any]) -> str | None:
    """``last.ckpt`` of a killed run, when checkpoints are on and one exists."""
    last = ckpt_dir / "last.ckpt"
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks) or not last.exists():
        return None
    log.info("resuming training from %s", last)
    return str(last)


def train_metrics(
    trainer: L.Trainer, module: PreferenceModule, prepared: Prepared, resumed: bool,
    fit_seconds: float,
) -> dict:
    """The train stage's metrics: Lightning's last logged values and the run's facts."""
    layout = prepared.layout
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(
        {
            "train/pairs": len(prepared.pairs),
            "train/steps": int(trainer.global_step),
            "train/layout_stacked": layout == "stacked",
            "train/layout_shared": layout == "shared",
            "train/layout_prefix": layout == "prefix",
            "train/resumed": resumed,
            "train/reference_reused": prepared.ref_reused,
            "train/reference_seconds": round(prepared.ref_seconds, 3),
            "train/fit_seconds": round(fit_seconds, 3),
            **{f"train/{k}": v for k, v in prepared.truncation.items()},
        }
    )
    if module.batch_losses:
        metrics["train/first_loss"] = module.batch_losses[0]
    return metrics


def train_policy(
    pairs_df: pd.DataFrame,
    policy: Policy,
    cfg: TrainerConfig,
    loss: Any,
    cache: StageCache,
    out_dir: Path,
    loggers: list,
    keep_order: bool = False,
    resume_dir: Path | None = None,
    reference: Policy | None = None,
) -> dict:
    """Train on ``pairs_df`` and write ``out_dir/checkpoint`` (save_pretrained). Returns metrics.

    Lightning checkpoints go to ``resume_dir`` (the stage's partial folder), so a killed run
    resumes from the last one, exactly where it stopped. ``reference``: the frozen reference
    when it is not ``policy`` itself (iterative DPO trains pi_t from pi_(t-1) against pi_0)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    prepared = prepare(pairs_df, policy, cfg, cache, reference)
    ckpt_dir = (resume_dir or out_dir) / "lightning"
    callbacks = build_callbacks(cfg, ckpt_dir)
    trainer = build_trainer(cfg, prepared.model, out_dir, loggers, callbacks)
    loader = build_loader(prepared, cfg, trainer, policy.tokenizer.pad_token_id, keep_order)
    module = PreferenceModule(prepared.model, loss, cfg, total_steps(len(loader.sampler), cfg))
    resume = resume_path(ckpt_dir, callbacks)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=resume)
    fit_seconds = time.perf_counter() - started
    save_final(trainer, module, policy, policy.tokenizer, cfg, out_dir / "checkpoint")
    return train_metrics(trainer, module, prepared, bool(resume), fit_seconds)


def save_final(
    trainer: L.Trainer, module: PreferenceModule, policy: Policy, tok: Any, cfg: TrainerConfig,
    path: Path,
) -> None:
    """Rank 0 writes the final weights. Under FSDP every rank takes part in gathering them."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        state = trainer.strategy.lightning_module_state_dict()
        if trainer.global_rank == 0:
            model = prepare_for_training(build_model(policy, cfg), cfg)
            model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
            save_checkpoint(model, tok, cfg, path)
    elif trainer.global_rank == 0:
        save_checkpoint(module.model, tok, cfg, path)
    trainer.strategy.barrier("sweetspot-save")


def save_checkpoint(model: Any, tok: Any, cfg: TrainerConfig, path: Path) -> None:
    """A folder ``from_pretrained`` loads: merged weights, or the LoRA adapter alone."""
    model = model.to("cpu")
    if cfg.lora.enabled and cfg.save == "merged":
        model = model.merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
