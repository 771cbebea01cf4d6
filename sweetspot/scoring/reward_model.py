"""A reward model: any ``AutoModelForSequenceClassification`` checkpoint scores (prompt, response).

Each row is formatted with the reward model's own chat template (prompt messages, then the
response as the assistant turn), tokenised, and scored by one forward pass; the score is the
model's logit at the last non-padding token (what every Bradley-Terry reward model such as
Skywork-Reward or ArmoRM is trained to output). Rows are sorted by token length and cut into
batches of similar length (``bucket_by_length``), so a batch carries little padding, and the
scores are scattered back to the table's order.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from sweetspot.errors import DataError, SweetspotError
from sweetspot.models import CHATML_TEMPLATE, DTYPES
from sweetspot.scoring.base import Scorer
from sweetspot.training.data import prompt_messages
from sweetspot.validation import at_least, one_of, require

log = logging.getLogger(__name__)

SCORER_DTYPES = ("float32", "bfloat16")


# ----------------------------------------------------------------------------------------------
# Helpers shared by the model-based scorers (implicit and embedding import them from here).


def check_device(field: str, device: str) -> None:
    require(
        isinstance(device, str)
        and (device in ("auto", "cpu", "mps") or device.split(":")[0] == "cuda"),
        field,
        f"must be 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps', got {device!r}",
    )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def warn_cpu_bf16(dtype: str, device: str, what: str) -> None:
    if dtype == "bfloat16" and device == "cpu":
        log.warning("%s: bfloat16 on CPU is slow and less precise than float32; bfloat16 only "
                    "pays off on a GPU", what)


def is_local_path(path: str) -> bool:
    """A name that can only mean a folder (hub ids are ``owner/name``, never start like this)."""
    return str(path).startswith((".", "/", "~")) or Path(path).expanduser().exists()


def local_or_hub(path: str, field: str) -> str:
    """The folder (expanded) when ``path`` names one; a hub id as given; an error for a folder
    that does not exist."""
    folder = Path(str(path)).expanduser()
    if folder.exists():
        return str(folder)
    if is_local_path(path):
        raise SweetspotError(f"{field}: checkpoint folder {folder} does not exist")
    return str(path)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hub offline mode while a local folder is loaded, so that a missing file is an error
    instead of a download: HF_HUB_OFFLINE=1 in the environment and in ``huggingface_hub``'s
    constants (read once, at its import), both restored afterwards."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    old_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_constant
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def is_empty(response: object) -> bool:
    return not isinstance(response, str) or not response.strip()


def require_columns(responses: pd.DataFrame, columns: tuple[str, ...]) -> None:
    for column in columns:
        if column not in responses.columns:
            raise DataError(f"responses table has no '{column}' column", field=column)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RewardModelScorer(Scorer):
    """Scores with a sequence-classification reward model.

    ``name_or_path``: a local checkpoint folder or a hub id. ``label_index``: which output to
    use when the head has several (``num_labels > 1``); null requires ``num_labels == 1``.
    ``max_length``: longer formatted conversations keep their first ``max_length`` tokens (the
    count is reported in ``last_stats["truncated"]``). ``template_fallback``: used only when the
    tokenizer has no chat template: ``chatml`` or a Jinja chat template string; null makes a
    missing template an error. ``dtype``: float32 or bfloat16 (bfloat16 is meant for GPUs).
    ``trust_remote_code`` is passed to ``from_pretrained`` only when true (ArmoRM-style custom
    heads need it). ``shard_prompts``: prompts per resumable shard when the score stage runs it
    (``Scorer.run``; a killed run resumes at the first missing shard).

    Columns: ``score/<name>`` and ``<name>/num_tokens`` (after truncation). Empty responses are
    scored like any other and counted in ``last_stats["empty_responses"]``; a non-finite model
    output becomes NaN and is counted in ``last_stats["nonfinite_scores"]``.
    """

    # Batching, device, batch order and shard size change speed and memory, not a row's score.
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = (
        "batch_size", "device", "bucket_by_length", "shard_prompts")
    STAT_WEIGHTS: ClassVar[dict[str, str]] = {"padding_fraction": "tokens"}
    DTYPE_CHOICES: ClassVar[tuple[str, ...]] = SCORER_DTYPES

    name: str = "reward_model"
    name_or_path: str
    label_index: int | None = None
    batch_size: int = 8
    max_length: int = 4096
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    bucket_by_length: bool = True
    template_fallback: str | None = None
    shard_prompts: int = 64

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        require(bool(self.name_or_path), "name_or_path",
                "must name a reward model folder or hub id")
        at_least("batch_size", self.batch_size, 1)
        at_least("shard_prompts", self.shard_prompts, 1)
        at_least("max_length", self.max_length, 2)
        one_of("dtype", self.dtype, self.DTYPE_CHOICES)
        check_device("device", self.device)
        if self.label_index is not None:
            at_least("label_index", self.label_index, 0)
        if self.template_fallback is not None:
            require(self.template_fallback == "chatml" or "{{" in self.template_fallback
                    or "{%" in self.template_fallback, "template_fallback",
                    "must be null, 'chatml' or a Jinja chat template string")
        self.last_stats: dict = {}
        self._model: Any = None
        self._tokenizer: Any = None
        self._template: str | None = None
        self._pad_id: int = 0
        self._device: str = "cpu"
        self._batch_size: int = self.batch_size

    # -- loading ---------------------------------------------------------------------------

    def _extra(self) -> dict:
        return {"trust_remote_code": True} if self.trust_remote_code else {}

    def load(self) -> tuple[Any, Any]:
        """The model and tokenizer (loaded once): the checkpoint is checked to be a
        sequence-classification reward model before its weights are read."""
        if self._model is not None:
            return self._model, self._tokenizer
        path = local_or_hub(self.name_or_path, "reward model name_or_path")
        local = Path(path).exists()
        if local and not (Path(path) / "config.json").is_file():
            raise SweetspotError(f"reward model {path}: not a transformers checkpoint (no "
                                 "config.json); expected a folder saved by save_pretrained")
        device = resolve_device(self.device)
        with hub_offline() if local else contextlib.nullcontext():
            self._check_config(path)
            tok, template = self._load_tokenizer(path)
            warn_cpu_bf16(self.dtype, device, f"reward model {path}")
            model = self._load_model(path)
        pad_id = self._padding(model, tok, path)
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        self._model, self._tokenizer = model.to(device).eval(), tok
        self._template, self._pad_id, self._device = template, pad_id, device
        return self._model, self._tokenizer

    def _check_config(self, path: str) -> None:
        """The config names a sequence-classification head whose width fits ``label_index``
        (a causal LM or a base model is refused before its weights are read)."""
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path, **self._extra())
        except (OSError, ValueError) as err:
            raise SweetspotError(f"reward model {path}: cannot load its config "
                                 f"({_first_line(err)})") from err
        architectures = list(getattr(config, "architectures", None) or [])
        auto_map = getattr(config, "auto_map", None) or {}
        if architectures and "AutoModelForSequenceClassification" not in auto_map and not any(
            a.endswith("ForSequenceClassification") for a in architectures
        ):
            raise SweetspotError(
                f"reward model {path} has no sequence-classification head: its "
                f"architecture is {architectures}; expected a reward model saved with "
                "AutoModelForSequenceClassification (e.g. LlamaForSequenceClassification, "
                "num_labels=1), not a causal LM")
        if architectures and not auto_map:  # a saved transformers head: num_labels wide
            self.check_outputs(int(getattr(config, "num_labels", 1)), path)

    def _load_tokenizer(self, path: str) -> tuple[Any, str | None]:
        """The tokenizer, and the chat template to format with (None: the tokenizer's own;
        ``template_fallback`` only when it has none)."""
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path, **self._extra())
        except (OSError, ValueError, KeyError) as err:
            raise SweetspotError(f"reward model {path}: cannot load its tokenizer "
                                 f"({_first_line(err)})") from err
        if tok.chat_template:
            return tok, None
        if self.template_fallback is not None:
            return tok, (CHATML_TEMPLATE if self.template_fallback == "chatml"
                         else self.template_fallback)
        raise SweetspotError(
            f"the tokenizer of reward model {path} has no chat template; set scorer."
            "template_fallback (chatml or a Jinja template) to format conversations for it")

    def _load_model(self, path: str) -> Any:
        """The weights, refusing a checkpoint whose classification head is missing (transformers
        would initialise it at random and score noise)."""
        from transformers import AutoModelForSequenceClassification

        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=DTYPES[self.dtype], output_loading_info=True,
                use_safetensors=True, **self._extra())
        except (OSError, ValueError, KeyError) as err:
            raise SweetspotError(f"reward model {path}: cannot load it as "
                                 f"AutoModelForSequenceClassification "
                                 f"({_first_line(err)})") from err
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise SweetspotError(
                f"reward model {path}: the checkpoint lacks weights of the classification head "
                f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}); expected a "
                "trained reward model (sequence classification), not a base or causal LM")
        return model

    def _padding(self, model: Any, tok: Any, path: str) -> int:
        """The pad id batches are padded with (sets ``_batch_size`` to 1 when there is none).

        The model reads its score at the rightmost token that is not padding, so the pad id
        must be one no conversation ends with. A model without one gets the tokenizer's pad
        token if that is not EOS; otherwise rows are scored one at a time (no padding at all).
        """
        text_config = (model.config.get_text_config()
                       if hasattr(model.config, "get_text_config") else model.config)
        pad_id = text_config.pad_token_id
        self._batch_size = self.batch_size
        if pad_id is None:
            candidate = tok.pad_token_id
            if candidate is not None and candidate != tok.eos_token_id:
                pad_id = text_config.pad_token_id = model.config.pad_token_id = candidate
            else:
                log.warning("reward model %s defines no padding token: scoring one row at a "
                            "time", path)
                pad_id, self._batch_size = 0, 1
        return int(pad_id)

    def check_outputs(self, width: int, path: str) -> None:
        """The head's output count fits ``label_index`` (checked from the config before loading
        and from the first batch's logits, which custom heads may shape differently)."""
        if self.label_index is None and width != 1:
            raise SweetspotError(f"reward model {path} has {width} outputs; set scorer "
                                 "label_index to the one that is the reward")
        if self.label_index is not None and self.label_index >= width:
            raise SweetspotError(f"reward model {path} has {width} outputs; label_index "
                                 f"{self.label_index} is out of range")

    # -- scoring ---------------------------------------------------------------------------

    def shard_size(self) -> int:
        """Resumable shards of ``shard_prompts`` prompts (``Scorer.run``)."""
        return self.shard_prompts

    def token_ids(self, responses: pd.DataFrame, tok: Any) -> list[list[int]]:
        """Each conversation's chat-template tokens, untruncated; an empty one is an error
        naming its prompt (both engines score exactly these tokens)."""
        texts = self.format(responses)
        ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
        for pid, x in zip(responses["prompt_id"], ids, strict=True):
            if not x:
                raise DataError(f"prompt {pid!r}: the chat template of reward model "
                                f"{self.name_or_path} produced no tokens", field="prompt")
        return ids

    def format(self, responses: pd.DataFrame) -> list[str]:
        """Each row as one conversation in the reward model's chat template."""
        _, tok = self.load()
        system = responses["system_prompt"] if "system_prompt" in responses else None
        texts = []
        for i, (pid, prompt, response) in enumerate(
            zip(responses["prompt_id"], responses["prompt"], responses["response"], strict=True)
        ):
            rec = {"prompt": prompt, "system_prompt": None if system is None else system.iloc[i]}
            messages = prompt_messages(rec) + [
                {"role": "assistant", "content": response if isinstance(response, str) else ""}]
            try:
                texts.append(tok.apply_chat_template(messages, chat_template=self._template,
                                                     tokenize=False))
            except Exception as err:  # Jinja raises its own types (e.g. "no system role")
                raise DataError(f"prompt {pid!r}: the chat template of reward model "
                                f"{self.name_or_path} rejects this conversation "
                                f"({_first_line(err)})", field="prompt") from err
        return texts

    def plan(self, lengths: list[int]) -> list[np.ndarray]:
        """Row indices of each batch: longest first when bucketing (a memory problem shows at
        once), table order otherwise."""
        order = (np.argsort(-np.asarray(lengths), kind="stable") if self.bucket_by_length
                 else np.arange(len(lengths)))
        size = self._batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    @torch.inference_mode()
    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        require_columns(responses, ("prompt_id", "prompt", "response"))
        model, tok = self.load()
        ids = self.token_ids(responses, tok)
        truncated = sum(len(x) > self.max_length for x in ids)
        ids = [x[: self.max_length] for x in ids]
        lengths = [len(x) for x in ids]
        scores = np.full(len(ids), np.nan)
        label = self.label_index or 0
        padded = 0
        batches = self.plan(lengths)
        for index in batches:
            width = max(lengths[i] for i in index)
            input_ids = torch.full((len(index), width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(index), width), dtype=torch.long)
            for row, i in enumerate(index):
                input_ids[row, : lengths[i]] = torch.tensor(ids[i])
                mask[row, : lengths[i]] = 1
            padded += int(mask.numel() - mask.sum())
            out = model(input_ids=input_ids.to(self._device), attention_mask=mask.to(self._device))
            logits = out.logits if hasattr(out, "logits") else out[0]
            logits = logits.reshape(len(index), -1)
            self.check_outputs(logits.shape[1], self.name_or_path)
            scores[index] = logits[:, label].float().cpu().numpy()
        nonfinite = ~np.isfinite(scores)
        scores[nonfinite] = np.nan
        total = sum(lengths) + padded
        self.last_stats = {
            "responses": len(ids),
            "empty_responses": int(sum(is_empty(r) for r in responses["response"])),
            "truncated": int(truncated),
            "nonfinite_scores": int(nonfinite.sum()),
            "batches": len(batches),
            "tokens": int(total),
            "padding_fraction": float(padded / total) if total else 0.0,
        }
        if truncated:
            log.warning("reward model %s: %d conversations longer than max_length=%d tokens were "
                        "truncated", self.name_or_path, truncated, self.max_length)
        return pd.DataFrame({self.column: scores, f"{self.name}/num_tokens": lengths},
                            index=responses.index)

