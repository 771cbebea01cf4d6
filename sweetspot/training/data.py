"""Pairs -> token batches.

Three layouts of one batch of B pairs:

- ``stacked`` (TRL's): rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected, right padded.
  The prompt goes through the model twice.
- ``shared`` (the default): one row per pair, ``prompt | chosen | rejected``. Rejected tokens
  attend to the prompt and to earlier rejected tokens, never to chosen ones, and their positions
  restart where the chosen ones did, so each completion sees exactly the context it would see
  alone: the log-probs are those of the stacked layout (tested to 1e-5) while the prompt is
  computed once. The mask is built on the device from a per-token segment id (0 prompt,
  1 chosen, 2 rejected, -1 padding); the scored tokens come as flat index lists, so only they
  reach the (vocabulary-sized) LM head.
- ``prefix``: the prompts go through the model once, as their own batch, and their keys and
  values serve both completions (a batch of 2B completion rows that attends to them): the
  prompt's cost is paid once and no attention is spent between chosen and rejected tokens.

Batches are planned once from length-sorted pairs (a batch holds sequences of similar length, so
little padding) and shuffled as whole batches, each epoch with its own seed; a strategy that asks
for a curriculum keeps the table's order instead. A planned batch is the *global* batch: under
data parallelism each process takes its slice of it, so N processes with ``batch_size`` b see the
same global batches as one process with ``batch_size`` N*b. The sampler knows how many batches
of the epoch the trainer has consumed (``ResumableLoader.state_dict``), so a run resumed from a
mid-epoch checkpoint continues with the next unseen batch instead of replaying the epoch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sweetspot.data import as_messages

EXTRA_KEYS = ("chosen_reward", "rejected_reward", "weight")


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


def pair_length(pair: TokenizedPair, layout: str = "stacked") -> int:
    """The width a pair needs in a batch of the given layout (what length bucketing sorts by)."""
    n_p, n_c, n_r = len(pair.prompt), len(pair.chosen), len(pair.rejected)
    if layout == "shared":
        return n_p + n_c + n_r
    if layout == "prefix":
        return n_p + 2 * max(n_c, n_r)
    return n_p + max(n_c, n_r)


def plan_batches(
    pairs: list[TokenizedPair], batch_size: int, keep_order: bool, layout: str = "stacked"
) -> list[list[int]]:
    """Index lists, one per batch: length-bucketed (the loader shuffles whole batches), or in
    table order for a curriculum."""
    index = list(range(len(pairs)))
    if not keep_order:
        lengths = [pair_length(p, layout) for p in pairs]
        index.sort(key=lambda i: (lengths[i], i))
    return [index[i : i + batch_size] for i in range(0, len(index), batch_size)]


def _extras(pairs: list[TokenizedPair], ref: np.ndarray | None) -> dict[str, torch.Tensor]:
    batch = {
        "chosen_lengths": torch.tensor([float(len(p.chosen)) for p in pairs]),
        "rejected_lengths": torch.tensor([float(len(p.rejected)) for p in pairs]),
    }
    for key in EXTRA_KEYS:
        batch[key] = torch.tensor([float(p.extras[key]) for p in pairs])
    batch["route_sft"] = torch.tensor([bool(p.extras["route_sft"]) for p in pairs])
    if ref is not None:
        batch["ref_chosen_logps"] = torch.tensor(ref[:, 0], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor(ref[:, 1], dtype=torch.float32)
    return batch


def collate(
    pairs: list[TokenizedPair], pad_id: int, ref: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Stacked layout: rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected; right
    padded."""
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
    }
    batch.update(_extras(pairs, ref))
    return batch


def collate_shared(
    pairs: list[TokenizedPair], pad_id: int, ref: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Shared-prompt layout: row i is ``prompt_i | chosen_i | rejected_i``, right padded.

    ``segment`` (0 prompt, 1 chosen, 2 rejected, -1 pad) and ``position_ids`` define the
    attention (see ``logprobs.shared_prompt_mask``). The scored tokens come flat: each names its
    row, the position whose hidden state predicts it (``score_src``; the last prompt position
    for the first token of either completion), its id (``score_target``) and the output slot it
    adds to (``score_slot``: i for pair i's chosen, B+i for its rejected)."""
    b = len(pairs)
    width = max(pair_length(p, "shared") for p in pairs)
    ids = np.full((b, width), pad_id, dtype=np.int64)
    pos = np.zeros((b, width), dtype=np.int64)
    seg = np.full((b, width), -1, dtype=np.int8)
    rows, src, target, slot = [], [], [], []
    for i, p in enumerate(pairs):
        n_p, n_c, n_r = len(p.prompt), len(p.chosen), len(p.rejected)
        ids[i, : n_p + n_c + n_r] = p.prompt + p.chosen + p.rejected
        pos[i, : n_p + n_c] = np.arange(n_p + n_c)
        pos[i, n_p + n_c : n_p + n_c + n_r] = np.arange(n_p, n_p + n_r)
        seg[i, :n_p] = 0
        seg[i, n_p : n_p + n_c] = 1
        seg[i, n_p + n_c : n_p + n_c + n_r] = 2
        # chosen token j sits at n_p + j and is predicted from n_p + j - 1
        c_src = np.arange(n_p - 1, n_p + n_c - 1)
        # rejected token j sits at n_p + n_c + j; token 0 is predicted from the prompt's end
        r_src = np.concatenate([[n_p - 1], np.arange(n_p + n_c, n_p + n_c + n_r - 1)])[:n_r]
        for sources, tokens, out in ((c_src, p.chosen, i), (r_src, p.rejected, b + i)):
            keep = sources >= 0  # an empty prompt leaves the first token unscored, as stacked
            rows.append(np.full(int(keep.sum()), i))
            src.append(sources[keep])
            target.append(np.asarray(tokens, dtype=np.int64)[keep])
            slot.append(np.full(int(keep.sum()), out))
    batch = {
        "input_ids": torch.from_numpy(ids),
        "position_ids": torch.from_numpy(pos),
        "segment": torch.from_numpy(seg),
        "score_row": torch.from_numpy(np.concatenate(rows).astype(np.int64)),
        "score_src": torch.from_numpy(np.concatenate(src).astype(np.int64)),
        "score_target": torch.from_numpy(np.concatenate(target).astype(np.int64)),
        "score_slot": torch.from_numpy(np.concatenate(slot).astype(np.int64)),
    }
    batch.update(_extras(pairs, ref))
    return batch


def collate_prefix(
    pairs: list[TokenizedPair], pad_id: int, ref: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Prefix layout: the prompts as one batch (their keys and values are then reused), the
    completions as another, chosen rows 0..B-1 and rejected rows B..2B-1, both right padded.

    ``completion_attention`` covers the prompt slots then the completion slots of each row
    (prompt padding hidden); ``position_ids`` continue each row's prompt. A completion's first
    token is predicted by its prompt's last position (``first_*``), the others by the
    completion position before them (``rest_*``); ``*_slot`` is the output row (2B)."""
    b = len(pairs)
    width_p = max(len(p.prompt) for p in pairs)
    width_c = max(max(len(p.chosen), len(p.rejected)) for p in pairs)
    prompt = np.full((b, width_p), pad_id, dtype=np.int64)
    comp = np.full((2 * b, width_c), pad_id, dtype=np.int64)
    attention = np.zeros((2 * b, width_p + width_c), dtype=np.int64)
    pos = np.zeros((2 * b, width_c), dtype=np.int64)
    first = {"row": [], "col": [], "target": [], "slot": []}
    rest = {"row": [], "col": [], "target": [], "slot": []}
    for i, p in enumerate(pairs):
        n_p = len(p.prompt)
        prompt[i, :n_p] = p.prompt
        for r, tokens in ((i, p.chosen), (b + i, p.rejected)):
            n = len(tokens)
            comp[r, :n] = tokens
            attention[r, :n_p] = 1
            attention[r, width_p : width_p + n] = 1
            pos[r] = np.arange(n_p, n_p + width_c)
            if n_p > 0:  # an empty prompt leaves the first token unscored, as stacked
                for key, value in (("row", i), ("col", n_p - 1), ("target", tokens[0]),
                                   ("slot", r)):
                    first[key].append(value)
            rest["row"].append(np.full(n - 1, r))
            rest["col"].append(np.arange(n - 1))
            rest["target"].append(np.asarray(tokens[1:], dtype=np.int64))
            rest["slot"].append(np.full(n - 1, r))
    batch = {
        "prompt_ids": torch.from_numpy(prompt),
        "completion_ids": torch.from_numpy(comp),
        "completion_attention": torch.from_numpy(attention),
        "position_ids": torch.from_numpy(pos),
    }
    for key in ("row", "col", "target", "slot"):
        batch[f"first_{key}"] = torch.tensor(first[key], dtype=torch.int64)
        batch[f"rest_{key}"] = torch.from_numpy(np.concatenate(rest[key]).astype(np.int64))
    batch.update(_extras(pairs, ref))
    return batch


COLLATE = {"stacked": collate, "shared": collate_shared, "prefix": collate_prefix}


@dataclass(frozen=True)
class BatchKey:
    """What the sampler hands the dataset: this process's pairs of one global batch, and the
    factor that makes the mean of the processes' losses the global batch's mean loss
    (``len(indices) * world / global_size``; 1 when the shards are equal)."""

    indices: tuple[int, ...]
    loss_scale: float = 1.0


class BatchDataset(Dataset):
    """Item = one collated batch; the key is a ``BatchKey`` (or a plain batch number into
    ``batches``, for callers that plan themselves)."""

    def __init__(
        self,
        pairs: list[TokenizedPair],
        batches: list[list[int]] | None,
        pad_id: int,
        ref_logps: np.ndarray | None = None,
        layout: str = "stacked",
    ):
        self.pairs, self.batches, self.pad_id, self.ref = pairs, batches, pad_id, ref_logps
        self.collate = COLLATE[layout]

    def __len__(self) -> int:
        return len(self.batches or [])

    def __getitem__(self, key: int | BatchKey) -> dict[str, torch.Tensor]:
        if not isinstance(key, BatchKey):
            key = BatchKey(tuple(self.batches[key]))  # type: ignore[index]
        idx = list(key.indices)
        ref = self.ref[idx] if self.ref is not None else None
        batch = self.collate([self.pairs[j] for j in idx], self.pad_id, ref)
        batch["loss_scale"] = torch.tensor(key.loss_scale, dtype=torch.float32)
        return batch


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler):
    """Yields this process's ``BatchKey`` of each global batch of an epoch.

    Global batches (``batch_size * world`` pairs) are planned from the pair lengths when first
    needed, since the world size is known only once the processes are up. Their order is a
    permutation seeded by (seed, epoch), or the table's order with ``keep_order``. A global
    batch too small to give every process a pair is merged into the one before it.
    ``resume(epoch, consumed)`` makes the next iteration start after the first ``consumed``
    batches of ``epoch``.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        keep_order: bool,
        seed: int,
        world: Callable[[], tuple[int, int]] = _dist,
    ):
        self.lengths, self.batch_size, self.keep_order, self.seed = (
            lengths,
            batch_size,
            keep_order,
            seed,
        )
        self.world = world
        self.epoch = 0
        self.skip = 0
        self._plan: tuple[int, list[list[int]]] | None = None

    def global_batches(self) -> list[list[int]]:
        _, world = self.world()
        if self._plan is None or self._plan[0] != world:
            if len(self.lengths) < world:
                raise ValueError(
                    f"{len(self.lengths)} pairs cannot be shared among {world} processes"
                )
            index = list(range(len(self.lengths)))
            if not self.keep_order:
                index.sort(key=lambda i: (self.lengths[i], i))
            size = self.batch_size * world
            batches = [index[i : i + size] for i in range(0, len(index), size)]
            if len(batches) > 1 and len(batches[-1]) < world:
                batches[-2].extend(batches.pop())
            self._plan = (world, batches)
        return self._plan[1]

    def order(self, epoch: int) -> list[int]:
        n = len(self.global_batches())
        if self.keep_order:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(n, generator=g).tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        if consumed >= len(self):  # saved at the end of an epoch: the next one starts afresh
            epoch, consumed = epoch + 1, 0
        self.epoch, self.skip = epoch, consumed

    def __len__(self) -> int:
        return len(self.global_batches())

    def __iter__(self) -> Iterator[BatchKey]:
        rank, world = self.world()
        batches = self.global_batches()
        order = self.order(self.epoch)
        skip, self.skip = self.skip, 0
        for b in order[skip:]:
            full = batches[b]
            shard = full[rank::world]
            yield BatchKey(tuple(shard), len(shard) * world / len(full))


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (it implements ``state_dict``): the state is the
    epoch and how many of its batches the trainer has processed, read from ``progress`` (set
    once the trainer exists) rather than counted here, since Lightning fetches a batch ahead."""

    def __init__(self, dataset: BatchDataset, sampler: EpochBatchSampler):
        super().__init__(dataset, batch_size=None, sampler=sampler, num_workers=0)
        self.epoch_sampler = sampler
        self.progress: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        consumed = self.progress() if self.progress is not None else 0
        return {"epoch": self.epoch_sampler.epoch, "consumed": int(consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch_sampler.resume(int(state["epoch"]), int(state["consumed"]))


def pairs_fingerprint(pairs: list[TokenizedPair]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    return h.hexdigest()[:16]
