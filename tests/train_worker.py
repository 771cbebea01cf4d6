"""A training run in its own process, for the tests that need one: DDP (Lightning relaunches
this script once per extra process) and kill-and-resume (the test SIGKILLs it mid-epoch).

    python -m tests.train_worker --out DIR --cache DIR [--devices 2 --strategy ddp] ...

(from the repository root; ``tests`` is a package).

Rank 0 writes ``DIR/result.json`` (the global batch loss of every step, the metrics) and
``DIR/checkpoint`` (save_pretrained). ``--pause-after-step S`` writes ``DIR/paused`` once step S
is done and then waits, so a test can kill the process at a known point after a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import pandas as pd

WORDS = "the a small red blue green fox dog runs jumps over under quickly slowly".split()


def synthetic_pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """Prompts and responses of varied lengths (the tiny model's tokenizer is byte-level)."""
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    return pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(n)],
            "prompt": [text(2, 8) for _ in range(n)],
            "chosen": [text(1, 10) for _ in range(n)],
            "rejected": [text(1, 10) for _ in range(n)],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--layout", default="shared")
    parser.add_argument("--ckpt-every", type=int, default=0)
    parser.add_argument("--pause-after-step", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from lightning.pytorch.callbacks import Callback

    from sweetspot.cache import StageCache
    from sweetspot.models import ModelSpec, Policy, resolve_model_dir
    from sweetspot.training import train as train_module
    from sweetspot.training.config import LoraOptions, TrainerConfig
    from sweetspot.training.losses import DPOLoss

    out = Path(args.out)
    cache = StageCache(args.cache)
    spec = ModelSpec(source="tiny")
    policy = Policy(spec, resolve_model_dir(spec, cache.root))
    cfg = TrainerConfig(
        accelerator=args.accelerator,
        precision=args.precision,
        devices=args.devices,
        strategy=args.strategy,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        epochs=args.epochs,
        max_steps=args.max_steps,
        lr=args.lr,
        warmup_ratio=0.2,
        layout=args.layout,
        checkpoint_every_n_steps=args.ckpt_every,
        lora=LoraOptions(enabled=not args.full),
    )

    class Pause(Callback):
        def on_train_batch_end(self, trainer, *rest) -> None:  # noqa: ANN001
            if trainer.global_step == args.pause_after_step and trainer.global_rank == 0:
                (out / "paused").write_text(str(os.getpid()))
                time.sleep(600)

    real_trainer = train_module.L.Trainer

    def trainer_with_pause(*a, **kw):  # the test's hook into the real train_policy
        if args.pause_after_step:
            kw["callbacks"] = [*kw.get("callbacks", []), Pause()]
        kw["enable_progress_bar"] = False
        return real_trainer(*a, **kw)

    train_module.L.Trainer = trainer_with_pause
    captured = {}
    real_module = train_module.PreferenceModule

    def module_factory(*a, **kw):
        captured["module"] = real_module(*a, **kw)
        return captured["module"]

    train_module.PreferenceModule = module_factory
    metrics = train_module.train_policy(
        synthetic_pairs(args.pairs),
        policy,
        cfg,
        DPOLoss(beta=0.1),
        cache,
        out,
        [],
        resume_dir=out / "partial",
    )
    rank = int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0"))
    if rank == 0:
        result = {"losses": captured["module"].batch_losses, "metrics": metrics}
        (out / "result.json").write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
