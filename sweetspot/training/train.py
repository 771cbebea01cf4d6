"""The train stage, top to bottom: tokenise pairs, reference log-probs (once, cached), LoRA or
full fine-tuning under a Lightning Trainer, resume from the last checkpoint, save_pretrained."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sweetspot.cache import StageCache
from sweetspot.data import read_table, write_table
from sweetspot.models import Policy, load_causal_lm
from sweetspot.training.config import TrainerConfig
from sweetspot.training.data import (
    BatchDataset,
    PairDataModule,
    TokenizedPair,
    collate,
    pairs_fingerprint,
    plan_batches,
    tokenize_pairs,
)
from sweetspot.training.logprobs import completion_logps
from sweetspot.training.module import PreferenceModule

log = logging.getLogger(__name__)


@torch.no_grad()
def reference_logps(
    model: Any, pairs: list[TokenizedPair], pad_id: int, batch_size: int
) -> np.ndarray:
    """[P, 2] summed log-probs of (chosen, rejected) under the frozen reference."""
    model.eval()
    out = np.zeros((len(pairs), 2), dtype=np.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate(chunk, pad_id)
        logps = (
            completion_logps(
                model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
            )
            .double()
            .numpy()
        )
        out[start : start + len(chunk), 0] = logps[: len(chunk)]
        out[start : start + len(chunk), 1] = logps[len(chunk) :]
    return out


def cached_reference_logps(
    cache: StageCache, policy: Policy, pairs: list[TokenizedPair], cfg: TrainerConfig
) -> tuple[np.ndarray, bool]:
    """Reference log-probs keyed by the reference model and the tokenised pairs' fingerprint."""

    def compute(ctx: Any) -> dict:
        model = load_causal_lm(policy.path, policy.spec)
        ref = reference_logps(model, pairs, policy.tokenizer.pad_token_id, cfg.ref_batch_size)
        write_table(
            pd.DataFrame(ref, columns=["ref_chosen_logps", "ref_rejected_logps"]),
            ctx.out_dir / "reference.parquet",
        )
        return {"rows": len(pairs)}

    entry = cache.get_or_compute(
        "reference", {"model": policy.identity()}, [pairs_fingerprint(pairs)], compute
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
) -> dict:
    """Train on ``pairs_df`` and write ``out_dir/checkpoint`` (save_pretrained). Returns metrics.

    Lightning checkpoints go to ``resume_dir`` (the stage's partial folder), so a killed run
    resumes from the last one."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tok = policy.tokenizer
    pairs, trunc = tokenize_pairs(pairs_df, tok, cfg.max_length, cfg.max_prompt_length)
    ref, ref_reused = cached_reference_logps(cache, policy, pairs, cfg)
    batches = plan_batches(pairs, cfg.batch_size, keep_order)
    steps_per_epoch = math.ceil(len(batches) / cfg.grad_accum)
    total = cfg.max_steps if cfg.max_steps > 0 else steps_per_epoch * cfg.epochs

    model = load_causal_lm(policy.path, policy.spec)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora.enabled:
        model = attach_lora(model, cfg)
    model.train()
    module = PreferenceModule(model, loss, cfg, total)
    data = PairDataModule(
        BatchDataset(pairs, batches, tok.pad_token_id, ref), shuffle=not keep_order, seed=cfg.seed
    )
    ckpt_dir = (resume_dir or out_dir) / "lightning"
    checkpoints = ModelCheckpoint(
        dirpath=ckpt_dir,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=0,
    )
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        accumulate_grad_batches=cfg.grad_accum,
        gradient_clip_val=cfg.grad_clip or None,
        log_every_n_steps=cfg.log_every_n_steps,
        logger=loggers or False,
        callbacks=[checkpoints],
        default_root_dir=str(out_dir),
        enable_model_summary=False,
        enable_progress_bar=True,
        num_sanity_val_steps=0,
    )
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)

    if trainer.global_rank == 0:
        save_checkpoint(module.model, tok, cfg, out_dir / "checkpoint")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(
        {
            "train/pairs": len(pairs),
            "train/steps": int(trainer.global_step),
            "train/reference_reused": ref_reused,
            **{f"train/{k}": v for k, v in trunc.items()},
        }
    )
    return metrics


def save_checkpoint(model: Any, tok: Any, cfg: TrainerConfig, path: Path) -> None:
    """A folder ``from_pretrained`` loads: merged weights, or the LoRA adapter alone."""
    if cfg.lora.enabled and cfg.save == "merged":
        model = model.merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
