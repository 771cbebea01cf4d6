"""Pairs -> token batches: chosen and rejected of a batch stacked into one right-padded tensor.

Batches are built once, up front, from length-sorted pairs (so a batch holds sequences of
similar length and little padding) and then shuffled as whole batches with a seed; a strategy
that asks for a curriculum keeps the table's order instead. Each dataset item is a whole batch,
so Lightning's distributed sampler shards batches across processes unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from sweetspot.data import as_messages


@dataclass
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    extras: dict[str, float | bool]


def prompt_messages(rec: dict) -> list[dict]:
    messages = as_messages(rec["prompt"])
    system = rec.get("system_prompt")
    if isinstance(system, str) and system:
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def tokenize_pairs(
    pairs: pd.DataFrame, tok: Any, max_length: int, max_prompt_length: int
) -> tuple[list[TokenizedPair], dict[str, int]]:
    """Tokenise with the chat template; over-long prompts keep their end, completions their start.

    Returns the pairs and counts of what was truncated (reported, never silent).
    """
    eos = [tok.eos_token_id]
    out, stats = [], {"prompts_truncated": 0, "completions_truncated": 0}
    for rec in pairs.to_dict("records"):
        text = tok.apply_chat_template(
            prompt_messages(rec), add_generation_prompt=True, tokenize=False
        )
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        if len(prompt) > max_prompt_length:
            prompt = prompt[-max_prompt_length:]
            stats["prompts_truncated"] += 1
        room = max(max_length - len(prompt), 1)
        completions = []
        for key in ("chosen", "rejected"):
            ids = tok(rec[key], add_special_tokens=False)["input_ids"] + eos
            if len(ids) > room:
                ids = ids[:room]
                stats["completions_truncated"] += 1
            completions.append(ids)
        extras = {
            "chosen_reward": float(rec.get("chosen_reward", 0.0)),
            "rejected_reward": float(rec.get("rejected_reward", 0.0)),
            "weight": float(rec.get("weight", 1.0)),
            "route_sft": rec.get("route", "dpo") == "sft",
        }
        out.append(TokenizedPair(prompt, completions[0], completions[1], extras))
    return out, stats


def plan_batches(pairs: list[TokenizedPair], batch_size: int, keep_order: bool) -> list[list[int]]:
    """Index lists, one per batch: length-bucketed (the loader shuffles whole batches), or in
    table order for a curriculum."""
    index = list(range(len(pairs)))
    if not keep_order:
        lengths = [len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in pairs]
        index.sort(key=lambda i: (lengths[i], i))
    return [index[i : i + batch_size] for i in range(0, len(index), batch_size)]


def collate(
    pairs: list[TokenizedPair], pad_id: int, ref: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected; right padded."""
    seqs: list[list[int]] = []
    masks: list[list[int]] = []
    for key in ("chosen", "rejected"):
        for p in pairs:
            seqs.append(p.prompt + getattr(p, key))
            masks.append([0] * len(p.prompt) + [1] * len(getattr(p, key)))
    width = max(len(s) for s in seqs)
    batch = {
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
        "completion_mask": torch.tensor([m + [0] * (width - len(m)) for m in masks]),
        "chosen_lengths": torch.tensor([float(len(p.chosen)) for p in pairs]),
        "rejected_lengths": torch.tensor([float(len(p.rejected)) for p in pairs]),
    }
    for key in ("chosen_reward", "rejected_reward", "weight"):
        batch[key] = torch.tensor([float(p.extras[key]) for p in pairs])
    batch["route_sft"] = torch.tensor([bool(p.extras["route_sft"]) for p in pairs])
    if ref is not None:
        batch["ref_chosen_logps"] = torch.tensor(ref[:, 0], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor(ref[:, 1], dtype=torch.float32)
    return batch


class BatchDataset(Dataset):
    def __init__(
        self,
        pairs: list[TokenizedPair],
        batches: list[list[int]],
        pad_id: int,
        ref_logps: np.ndarray | None = None,
    ):
        self.pairs, self.batches, self.pad_id, self.ref = pairs, batches, pad_id, ref_logps

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        idx = self.batches[i]
        ref = self.ref[idx] if self.ref is not None else None
        return collate([self.pairs[j] for j in idx], self.pad_id, ref)


class PairDataModule(L.LightningDataModule):
    def __init__(self, dataset: BatchDataset, shuffle: bool, seed: int):
        super().__init__()
        self.dataset, self.shuffle, self.seed = dataset, shuffle, seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.dataset, batch_size=None, shuffle=self.shuffle, generator=generator, num_workers=0
        )


def pairs_fingerprint(pairs: list[TokenizedPair]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    return h.hexdigest()[:16]
