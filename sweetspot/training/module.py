"""The LightningModule: one forward for chosen and rejected (stacked, or one row per pair with the
prompt computed once), the configured loss, and the reference log-probs read from the batch
(computed once, before training)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

from sweetspot.training.config import TrainerConfig
from sweetspot.training.logprobs import batch_logps
from sweetspot.training.losses import LossInputs
from sweetspot.training.optim import build_optimizer, build_scheduler

RNG_KEY = "sweetspot_rng"


class PreferenceModule(L.LightningModule):
    def __init__(self, model: Any, loss: Any, cfg: TrainerConfig, total_steps: int):
        super().__init__()
        self.model, self.loss_fn, self.cfg = model, loss, cfg
        self.total_steps = total_steps
        # LoRA checkpoints keep the trainable weights only (see on_save_checkpoint)
        self.strict_loading = not cfg.lora.enabled
        self.batch_losses: list[float] = []  # the global batch's loss, per training batch
        self._last_loss: torch.Tensor | None = None

    def forward_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logps = batch_logps(self.model, batch)
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
        # With shards of unequal size, the mean over processes of the scaled losses (what DDP's
        # gradient averaging computes) is the global batch's mean loss.
        loss = out.loss * batch["loss_scale"] if "loss_scale" in batch else out.loss
        self._last_loss = loss.detach()
        size = chosen.shape[0]
        sync = self.trainer.world_size > 1
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size, sync_dist=sync)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value.detach().float(), batch_size=size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = self._last_loss
        if loss is None:
            return
        if self.trainer.world_size > 1:
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
        self.batch_losses.append(float(loss))

    def configure_optimizers(self) -> dict:
        """``trainer.optimizer`` over the trainable weights at ``trainer.lr``, and
        ``trainer.lr_scheduler`` stepped every optimizer step (see ``training.optim``)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.cfg.optimizer, params, self.cfg.lr, self.cfg.precision)
        # total_steps comes from the caller: ``trainer.estimated_stepping_batches`` would load
        # the train dataloader before the checkpoint is restored, and Lightning would then
        # never hand the loader its saved state.
        total = self.total_steps
        warmup = int(self.cfg.warmup_ratio * total)
        scheduler = build_scheduler(self.cfg.lr_scheduler, optimizer, warmup, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """FSDP clips through its root module (sharded gradients: the norm needs every rank);
        Lightning's own path refuses norm clipping under FSDP."""
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(
            optimizer, gradient_clip_val, gradient_clip_algorithm
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainable weights only when the rest is frozen (LoRA: megabytes instead of
        the whole model), and the random state, so a resumed run draws what the killed one
        would have."""
        plain = isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        if self.cfg.lora.enabled and plain and "state_dict" in checkpoint:
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if k in trainable
            }
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[RNG_KEY] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get(RNG_KEY)
        if rng:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
