"""The ``trainer=`` node: hardware, optimisation and adaptation of one training run."""

from __future__ import annotations

from dataclasses import dataclass, field

from sweetspot.validation import at_least, non_negative, one_of, positive, require


@dataclass(kw_only=True)
class LoraOptions:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass(kw_only=True)
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    epochs: int = 1
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    grad_clip: float = 1.0
    max_length: int = 512
    max_prompt_length: int = 256
    gradient_checkpointing: bool = False
    lora: LoraOptions = field(default_factory=LoraOptions)
    save: str = "merged"
    seed: int = 0
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 50
    ref_batch_size: int = 8

    def __post_init__(self) -> None:
        at_least("epochs", self.epochs, 1)
        require(
            self.max_steps == -1 or self.max_steps >= 1,
            "max_steps",
            f"must be -1 (no limit) or >= 1, got {self.max_steps}",
        )
        at_least("batch_size", self.batch_size, 1)
        at_least("grad_accum", self.grad_accum, 1)
        positive("lr", self.lr)
        non_negative("weight_decay", self.weight_decay)
        require(
            0 <= self.warmup_ratio < 1,
            "warmup_ratio",
            f"must be in [0, 1), got {self.warmup_ratio}",
        )
        one_of("scheduler", self.scheduler, ("cosine", "linear", "constant"))
        non_negative("grad_clip", self.grad_clip)
        at_least("max_prompt_length", self.max_prompt_length, 1)
        require(
            self.max_length > self.max_prompt_length,
            "max_length",
            f"must exceed max_prompt_length ({self.max_prompt_length}), got {self.max_length}",
        )
        one_of("save", self.save, ("merged", "adapter"))
        at_least("lora.r", self.lora.r, 1)
        require(
            0 <= self.lora.dropout < 1,
            "lora.dropout",
            f"must be in [0, 1), got {self.lora.dropout}",
        )
        at_least("checkpoint_every_n_steps", self.checkpoint_every_n_steps, 1)
        at_least("ref_batch_size", self.ref_batch_size, 1)
