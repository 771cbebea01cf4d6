"""The LightningModule: one stacked forward for chosen and rejected, the configured loss, and
the reference log-probs read from the batch (computed once, before training)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from sweetspot.training.config import TrainerConfig
from sweetspot.training.logprobs import completion_logps
from sweetspot.training.losses import LossInputs


class PreferenceModule(L.LightningModule):
    def __init__(self, model: Any, loss: Any, cfg: TrainerConfig, total_steps: int):
        super().__init__()
        self.model, self.loss_fn, self.cfg, self.total_steps = model, loss, cfg, total_steps

    def forward_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logps = completion_logps(
            self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        )
        half = batch["chosen_lengths"].shape[0]
        return logps[:half], logps[half:]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        chosen, rejected = self.forward_logps(batch)
        out = self.loss_fn(
            LossInputs(
                policy_chosen_logps=chosen,
                policy_rejected_logps=rejected,
                ref_chosen_logps=batch["ref_chosen_logps"],
                ref_rejected_logps=batch["ref_rejected_logps"],
                chosen_lengths=batch["chosen_lengths"],
                rejected_lengths=batch["rejected_lengths"],
                chosen_reward=batch["chosen_reward"],
                rejected_reward=batch["rejected_reward"],
                route_sft=batch["route_sft"],
                weight=batch["weight"],
            )
        )
        size = chosen.shape[0]
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=size)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value.detach().float(), batch_size=size)
        return out.loss

    def configure_optimizers(self) -> dict:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warmup = int(self.cfg.warmup_ratio * self.total_steps)
        schedule = self.cfg.scheduler

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if schedule == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
            return (
                1.0 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
