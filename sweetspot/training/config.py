"""The ``trainer=`` node: hardware, optimisation and adaptation of one training run.

The defaults here are what ``make run`` trains with (``conf/trainer/cpu.yaml`` adds nothing), so
``TrainerConfig()`` in a test trains as the command line does. Presets (``conf/trainer/``):
``cpu``, ``gpu`` (one GPU, bf16-mixed), ``ddp``, ``fsdp`` and ``deepspeed``; any field can be
overridden (``trainer=ddp trainer.accelerator=cpu trainer.devices=2 trainer.precision=32-true``
runs DDP over gloo on a CPU machine).

The optimizer, the learning-rate schedule and extra Lightning callbacks are config nodes that
Hydra instantiates (``sweetspot.training.optim``): ``optimizer`` and ``lr_scheduler`` are
``_partial_`` nodes completed with the parameters and ``lr`` (the optimizer) and with the
optimizer and step counts (the schedule, transformers' ``get_*_schedule_with_warmup``
signature), e.g. ``trainer.optimizer._target_=torch.optim.SGD`` or
``trainer.lr_scheduler.decay=linear``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sweetspot.validation import at_least, non_negative, one_of, positive, require

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
LAYOUTS = ("auto", "prefix", "shared", "stacked")


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
    # Left out of the cache key: they change speed, memory or logging, not the trained weights
    # (the layouts give the same log-probs, tested to 1e-5; checkpointing recomputes the same
    # activations; ref_batch_size batches the reference's log-probs).
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = (
        "ref_batch_size", "log_every_n_steps", "checkpoint_every_n_steps", "layout",
        "gradient_checkpointing",
    )

    accelerator: str = "cpu"
    devices: int = 1  # per node; -1 = every visible device
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp, ddp_spawn, fsdp, deepspeed_stage_2, ...
    precision: str = "32-true"
    epochs: int = 2
    max_steps: int = -1
    batch_size: int = 4  # pairs per device and step; global = batch_size * devices * num_nodes
    grad_accum: int = 1
    lr: float = 5e-4  # a LoRA rate; passed to the optimizer as its lr
    warmup_ratio: float = 0.1  # warmup steps = int(warmup_ratio * optimizer steps)
    # Instantiated with Hydra, then called with (params, lr=lr). AdamW: TRL's default; fused
    # unless mixed precision (``fused: null`` lets sweetspot choose, see optim.build_optimizer).
    optimizer: dict[str, Any] = field(
        default_factory=lambda: {
            "_target_": "torch.optim.AdamW", "_partial_": True, "weight_decay": 0.0,
            "fused": None,
        }
    )
    # Called with (optimizer, num_warmup_steps=, num_training_steps=), stepped every optimizer
    # step. The default: linear warmup from lr / (warmup + 1), then cosine to 0 (or linear,
    # constant: ``decay``); transformers.get_cosine_schedule_with_warmup etc. plug in as well.
    lr_scheduler: dict[str, Any] = field(
        default_factory=lambda: {
            "_target_": "sweetspot.training.optim.WarmupThenDecay", "_partial_": True,
            "decay": "cosine",
        }
    )
    # Extra Lightning callbacks, each a node with _target_ (e.g. LearningRateMonitor). The
    # checkpoint callback is not here: checkpoint_every_n_steps makes it (it is what resumes).
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    grad_clip: float = 1.0
    max_length: int = 384  # prompt + completion tokens; longer pairs are truncated (counted)
    max_prompt_length: int = 192
    gradient_checkpointing: bool = False
    # How chosen and rejected share a forward (same log-probs in all, tested to 1e-5):
    # stacked: TRL's two rows per pair; shared: one row per pair, the prompt computed once, a
    # dense attention mask; prefix: the prompts once, their keys and values reused by both
    # completions (not with gradient checkpointing); auto: whichever costs the fewest FLOPs
    # for the model and the pairs. shared and prefix need sdpa or eager attention.
    layout: str = "auto"
    lora: LoraOptions = field(default_factory=LoraOptions)
    save: str = "merged"
    seed: int = 0
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 25  # 0: no Lightning checkpoints (no resume)
    ref_batch_size: int = 8

    def __post_init__(self) -> None:
        one_of("accelerator", self.accelerator, ACCELERATORS)
        require(
            self.devices == -1 or self.devices >= 1,
            "devices",
            f"must be >= 1, or -1 for every visible device, got {self.devices}",
        )
        at_least("num_nodes", self.num_nodes, 1)
        one_of("precision", self.precision, PRECISIONS)
        one_of("layout", self.layout, LAYOUTS)
        if "deepspeed" in self.strategy and importlib.util.find_spec("deepspeed") is None:
            require(
                False,
                "strategy",
                f"{self.strategy!r} needs DeepSpeed, which is not installed: "
                "pip install deepspeed (it needs a CUDA toolkit; or use trainer=fsdp)",
            )
        require(
            self.accelerator != "cpu"
            or not any(s in self.strategy for s in ("fsdp", "deepspeed")),
            "strategy",
            f"{self.strategy!r} runs on GPUs only; on CPUs use ddp "
            "(trainer=ddp trainer.accelerator=cpu trainer.devices=N)",
        )
        require(
            "stage_3" not in self.strategy,
            "strategy",
            "DeepSpeed ZeRO stage 3 is not supported (the final save_pretrained needs whole "
            "weights); use deepspeed_stage_2 or trainer=fsdp",
        )
        at_least("epochs", self.epochs, 1)
        require(
            self.max_steps == -1 or self.max_steps >= 1,
            "max_steps",
            f"must be -1 (no limit) or >= 1, got {self.max_steps}",
        )
        at_least("batch_size", self.batch_size, 1)
        at_least("grad_accum", self.grad_accum, 1)
        positive("lr", self.lr)
        require(
            0 <= self.warmup_ratio < 1,
            "warmup_ratio",
            f"must be in [0, 1), got {self.warmup_ratio}",
        )
        from sweetspot.training.optim import check_partial

        check_partial("optimizer", self.optimizer, ("params",))
        check_partial(
            "lr_scheduler", self.lr_scheduler,
            ("optimizer", "num_warmup_steps", "num_training_steps"),
        )
        for i, node in enumerate(self.callbacks):
            check_partial(f"callbacks[{i}]", node, (), partial=False)
        non_negative("grad_clip", self.grad_clip)
        at_least("max_prompt_length", self.max_prompt_length, 1)
        require(
            self.max_length > self.max_prompt_length,
            "max_length",
            f"must exceed max_prompt_length ({self.max_prompt_length}), got {self.max_length}",
        )
        one_of("save", self.save, ("merged", "adapter"))
        require(
            self.save == "merged" or self.lora.enabled,
            "save",
            "'adapter' needs lora.enabled=true (full fine-tuning saves whole weights: merged)",
        )
        at_least("lora.r", self.lora.r, 1)
        require(
            0 <= self.lora.dropout < 1,
            "lora.dropout",
            f"must be in [0, 1), got {self.lora.dropout}",
        )
        at_least("checkpoint_every_n_steps", self.checkpoint_every_n_steps, 0)
        at_least("ref_batch_size", self.ref_batch_size, 1)
        at_least("log_every_n_steps", self.log_every_n_steps, 1)
