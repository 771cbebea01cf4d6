"""Responses that already exist: several completions per prompt, optional scores and optional
pairwise comparisons, read from JSONL, Parquet or a HF ``datasets`` folder (``save_to_disk``).

The generic row::

    {"id": "q1",                                 # optional (id_field); else row-<line>
     "prompt": "..." | [{"role", "content"}, ...],
     "responses": ["...", "...", ...],
     "scores": [4.0, 2.5, ...],                  # optional, one per response
     "comparisons": [[0, 1, 0.9], [2, 1, 1.0]]}  # optional: P(response i beats response j)

Other layouts go through the field mapping. UltraFeedback (``instruction``, ``completions`` as a
list of dicts with ``response``, ``overall_score`` and ``annotations.<aspect>.Rating``)::

    prompt_field: instruction
    responses_field: completions
    response_key: response            # completions are dicts: the text is under this key
    score_fields:                     # output column -> key path inside each completion
      score: overall_score
      score/helpfulness: annotations.helpfulness.Rating
      score/honesty: annotations.honesty.Rating

Key paths are dotted; a part that is a number indexes a list. When ``response_key`` is null the
responses are strings and a score path is read on the row and must give one value per response.

Output columns: the sampler's usual ones (``num_tokens`` is missing, ``<NA>``, since no tokenizer
is involved; ``finish_reason`` is ``"offline"``; ``logp`` is NaN) plus the score columns.
``score`` is the main score by convention and ``score/<aspect>`` the others (the
names are the keys of ``score_fields``, so any name works); ``scorer=column`` reads them. A score
that is missing, null, ``"N/A"``, NaN or infinite is kept as NaN and counted; a response that is
the empty string is kept and counted. Structural errors (malformed JSON, responses not a list,
scores of another length than the responses, a bad comparison, a duplicate id) raise
:class:`DataError` naming the file, the 1-based line (row for Parquet and datasets) and the field.
The counts (``offline/empty_responses``, ``offline/nan_scores/<column>``,
``offline/prompts_without_responses``, ...) are in ``data().stats`` and in ``run()``'s stats.

Prompts: since they come from the file, :meth:`OfflineSampler.prompt_source` is a task over
them (:class:`OfflinePrompts`: ``prompt_id``, ``prompt``, ``split = "train"``, from
:meth:`OfflineSampler.load_prompts`) that the pipeline uses instead of the configured task.
Comparisons:
:meth:`OfflineSampler.comparisons` gives them as a side table with the denoiser's columns
``prompt_id, i, j, p`` (i, j are sample ids: positions in the responses list; p the probability
that i beats j), optionally restricted to some prompt ids.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweetspot.cache import file_sha256
from sweetspot.data import as_messages, read_jsonl
from sweetspot.errors import DataError
from sweetspot.sampling.base import RESPONSE_COLUMNS, Sampler
from sweetspot.tasks.base import Task
from sweetspot.validation import at_least, one_of, require

FORMATS = ("auto", "jsonl", "parquet", "hf_disk")
LAYOUTS = ("auto", "responses", "pairs", "transcripts")
MISSING_MARKERS = frozenset({"", "n/a", "na", "none", "null", "nan", "-"})
COMPARISON_COLUMNS = ("prompt_id", "i", "j", "p")
COMPARISONS_COLUMN = "comparisons"  # of the responses table: [[j, p], ...] in response i's row


@dataclass
class OfflineData:
    """What the file holds, validated: one row per response, prompts, comparisons, counts."""

    prompts: pd.DataFrame
    responses: pd.DataFrame
    comparisons: pd.DataFrame
    stats: dict[str, int]


@dataclass(kw_only=True)
class OfflinePrompts(Task):
    """The prompts of an offline file, as the run's task: keyed by the sampler's config (which
    holds the file's content hash), not by the ``task`` node it replaces."""

    sampler: OfflineSampler

    def load(self) -> pd.DataFrame:
        return self.sampler.load_prompts()

    def fingerprint(self) -> dict:
        return {"sampler": self.sampler.cache_config()}


@dataclass(kw_only=True)
class OfflineSampler(Sampler):
    path: str
    format: str = "auto"
    split: str = "train"  # which split of a saved DatasetDict (format hf_disk)
    prompt_field: str = "prompt"
    responses_field: str = "responses"
    response_key: str | None = None
    score_fields: dict[str, str] | None = None
    id_field: str | None = "id"
    comparisons_field: str | None = "comparisons"
    n: int | None = None  # keep the first n responses of each prompt (null: all of them)
    layout: str = "auto"  # auto | responses | pairs | transcripts (see the module docstring)
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    score_chosen_field: str = "score_chosen"
    score_rejected_field: str = "score_rejected"
    shard_size: int = 1024  # reading is cheap: large shards
    needs_model: bool = False

    def __post_init__(self) -> None:
        self._data: OfflineData | None = None  # parsed on first use; not a config field
        at_least("shard_size", self.shard_size, 1)
        if self.n is not None:
            at_least("n", self.n, 1)
        one_of("format", self.format, FORMATS)
        one_of("layout", self.layout, LAYOUTS)
        for name in ("chosen_field", "rejected_field", "score_chosen_field",
                     "score_rejected_field"):
            require(bool(getattr(self, name)), name, "must name a field")
        require(
            self.layout not in ("pairs", "transcripts") or self.score_fields is None,
            "score_fields",
            "applies to the responses layout; pair layouts read score_chosen_field and "
            "score_rejected_field",
        )
        require(bool(self.path), "path", "must name a file or a datasets folder")
        require(bool(self.prompt_field), "prompt_field", "must name a field")
        require(bool(self.responses_field), "responses_field", "must name a field")
        for column, key in (self.score_fields or {}).items():
            require(bool(column) and bool(key), "score_fields", f"empty entry {column!r}: {key!r}")
            require(
                column not in _RESERVED,
                f"score_fields.{column}",
                f"{column!r} is a column of the responses table; choose another name",
            )

    # -- cache key -----------------------------------------------------------------------------

    def execution_only(self) -> tuple[str, ...]:
        return (*super().execution_only(), "seed")  # nothing is drawn: the seed changes nothing

    def cache_config(self) -> dict:
        config = super().cache_config()
        config["content_sha256"] = file_sha256(Path(self.path).expanduser())
        return config

    # -- the pipeline's entry points -----------------------------------------------------------

    def load_prompts(self) -> pd.DataFrame:
        """``prompt_id``, ``prompt`` (chat messages), ``split`` (all ``train``), in file order."""
        return self.data().prompts.copy()

    def prompt_source(self) -> Task:
        """The file's prompts replace the task's."""
        return OfflinePrompts(sampler=self)

    def sample(self, prompts: pd.DataFrame, policy: Any = None) -> pd.DataFrame:
        """The file's responses of ``prompts`` (in their order), with the score columns."""
        data = self.data()
        wanted = [str(p) for p in prompts["prompt_id"]]
        unknown = sorted(set(wanted) - set(data.prompts["prompt_id"]))
        if unknown:
            raise DataError(
                f"{len(unknown)} prompt id(s) are not in the file, e.g. {unknown[0]!r}; the "
                "offline sampler samples the prompts of its own file (load_prompts())",
                path=self.path,
            )
        order = {pid: k for k, pid in enumerate(wanted)}
        table = data.responses[data.responses["prompt_id"].isin(order)]
        keys = table["prompt_id"].map(order)
        return (
            table.assign(_order=keys)
            .sort_values(["_order", "sample_id"], kind="stable")
            .drop(columns="_order")
            .reset_index(drop=True)
        )

    def comparisons(self, prompt_ids: Any = None) -> pd.DataFrame:
        """The file's pairwise comparisons (``prompt_id, i, j, p``), optionally of some prompts."""
        table = self.data().comparisons
        if prompt_ids is not None:
            table = table[table["prompt_id"].isin({str(p) for p in prompt_ids})]
        return table.reset_index(drop=True)

    def run(
        self, prompts: pd.DataFrame, policy: Any, partial_dir: Path
    ) -> tuple[pd.DataFrame, dict]:
        table, stats = super().run(prompts, policy, partial_dir)
        return table, {**stats, **self.data().stats}

    # -- reading and validation ----------------------------------------------------------------

    def data(self) -> OfflineData:
        if self._data is None:
            self._data = self._parse()
        return self._data

    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        path = Path(self.path).expanduser()
        if path.is_dir():
            return "hf_disk"
        name = path.name.lower()
        if name.endswith((".parquet", ".pq")):
            return "parquet"
        if name.endswith((".jsonl", ".json", ".jsonl.txt", ".ndjson")):
            return "jsonl"
        raise DataError(
            "cannot tell the format from the name; set sampler.format to jsonl, parquet or hf_disk",
            path=self.path,
        )

    def _rows(self) -> list[dict]:
        path = Path(self.path).expanduser()
        if not path.exists():
            raise DataError("file not found", path=self.path)
        fmt = self.resolved_format()
        if fmt == "jsonl":
            return read_jsonl(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except Exception as e:  # pyarrow raises several types for a broken file
                raise DataError(f"not a readable Parquet file: {e}", path=self.path) from None
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"not a datasets folder (save_to_disk): {e}", path=self.path) from None
        if isinstance(loaded, datasets.DatasetDict):
            if self.split not in loaded:
                raise DataError(
                    f"the saved DatasetDict has no split {self.split!r} (it has "
                    f"{sorted(loaded)}); set sampler.split",
                    path=self.path,
                )
            loaded = loaded[self.split]
        return loaded.to_list()

    def detect_layout(self, row: dict) -> str:
        """``layout`` when set, else from the first row's fields: ``responses_field`` present:
        responses; ``chosen_field`` and ``rejected_field``: pairs when ``prompt_field`` is there
        too, else transcripts; anything else: responses (whose checks then name what is
        missing)."""
        if self.layout != "auto":
            return self.layout
        if self.responses_field in row:
            return "responses"
        if self.chosen_field in row and self.rejected_field in row:
            return "pairs" if self.prompt_field in row else "transcripts"
        return "responses"

    def _parse(self) -> OfflineData:
        rows = self._rows()
        if not rows:
            raise DataError("no rows", path=self.path)
        layout = self.detect_layout(rows[0])
        if layout != "responses":
            require(
                self.score_fields is None,
                "score_fields",
                "applies to the responses layout; this file has the "
                f"{layout} layout (score_chosen_field and score_rejected_field are read)",
            )
            return self._parse_pairs(rows, layout)
        return self._parse_responses(rows)

    # -- the responses layout ------------------------------------------------------------------

    def _parse_responses(self, rows: list[dict]) -> OfflineData:
        """One row per prompt with its list of responses (and score lists, comparisons)."""
        explicit_scores = self.score_fields is not None
        score_fields = self.score_fields if explicit_scores else {"score": "scores"}
        found = dict.fromkeys(score_fields, False)
        prompts, responses, comparisons = [], [], []
        seen: dict[str, int] = {}
        stats = {
            **_common_counts(),
            **{f"offline/nan_scores/{c}": 0 for c in score_fields},
        }
        for line, row in enumerate(rows, start=1):
            where = {"path": self.path, "line": line}
            pid = self._prompt_id(row, line, where)
            if pid in seen:
                raise DataError(
                    f"duplicate id {pid!r} (first on line {seen[pid]})",
                    field=self.id_field or "id",
                    **where,
                )
            seen[pid] = line
            messages = self._prompt(row, where)
            texts, items = self._responses(row, where)
            total = len(texts)
            if self.n is not None:
                texts, items = texts[: self.n], items[: self.n]
            columns = self._score_columns(row, items, len(texts), score_fields, where, found, stats)
            comparisons.extend(self._comparisons(row, pid, total, len(texts), where))
            prompts.append({"prompt_id": pid, "prompt": messages, "split": "train"})
            responses.extend(_response_rows(pid, texts, columns, stats))
        self._check_score_fields(score_fields, found, stats)
        score_columns = [c for c in score_fields if explicit_scores or found[c]]
        table = _responses_table(responses, list(score_fields), score_columns)
        return _finish(prompts, table, comparisons, stats)

    def _score_columns(
        self,
        row: dict,
        items: list[Any],
        count: int,
        score_fields: dict[str, str],
        where: dict,
        found: dict[str, bool],
        stats: dict[str, int],
    ) -> dict[str, list[float]]:
        """Each score column's values for one row's ``count`` responses (NaN where the row has
        none, counted); ``found`` records which columns some row had."""
        columns: dict[str, list[float]] = {}
        for column, key in score_fields.items():
            values = self._scores(row, items, key, count, where, column)
            if values is None:
                columns[column] = [math.nan] * count
                stats[f"offline/nan_scores/{column}"] += count
                continue
            found[column] = True
            columns[column] = values
            stats[f"offline/nan_scores/{column}"] += sum(math.isnan(v) for v in values)
        return columns

    def _check_score_fields(
        self, score_fields: dict[str, str], found: dict[str, bool], stats: dict[str, int]
    ) -> None:
        """A score field the user named must occur in some row; the default ``scores`` field is
        optional (its count is dropped when no row has it)."""
        for column, ok in found.items():
            if ok:
                continue
            if self.score_fields is not None:
                raise DataError(
                    f"score_fields.{column} = {score_fields[column]!r} was found in no row",
                    path=self.path,
                    field=score_fields[column],
                )
            stats.pop(f"offline/nan_scores/{column}")

    # -- pair layouts ----------------------------------------------------------------------

    def _parse_pairs(self, rows: list[dict], layout: str) -> OfflineData:
        """Rows of (prompt, chosen, rejected) merged by prompt: one prompt per distinct prompt
        (its first row's id), each distinct response text once, one comparison per row."""
        groups: dict[str, _Group] = {}
        ids: dict[str, tuple[str, int]] = {}  # explicit id -> (prompt key, first line)
        stats = {
            **_common_counts(),
            "offline/pair_rows": len(rows),
            "offline/merged_rows": 0,
            "offline/identical_pairs": 0,
            "offline/duplicate_responses": 0,
            "offline/conflicting_scores": 0,
            "offline/prompts_with_several_pairs": 0,
        }
        has_scores = False
        for line, row in enumerate(rows, start=1):
            where = {"path": self.path, "line": line}
            messages, chosen, rejected = self._read_pair(row, layout, where)
            scores = []
            for name in (self.score_chosen_field, self.score_rejected_field):
                raw = row.get(name, _ABSENT)
                has_scores |= raw is not _ABSENT
                scores.append(_to_float(raw, where, name))
            key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            explicit = self.id_field and row.get(self.id_field) is not None
            pid = self._prompt_id(row, line, where)
            if explicit and pid in ids and ids[pid][0] != key:
                raise DataError(
                    f"duplicate id {pid!r} (first on line {ids[pid][1]}, with another prompt)",
                    field=self.id_field,
                    **where,
                )
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(pid, messages)
            else:
                stats["offline/merged_rows"] += 1
            if explicit:
                ids.setdefault(pid, (key, line))
            c = group.add(chosen, scores[0], stats)
            r = group.add(rejected, scores[1], stats)
            if c == r:
                stats["offline/identical_pairs"] += 1
                continue
            group.comparisons.append((c, r))
        return self._merged(list(groups.values()), has_scores, stats)

    def _read_pair(self, row: Any, layout: str, where: dict) -> tuple[list[dict], str, str]:
        """One row's (prompt messages, chosen text, rejected text), from a prompt field and two
        responses (``pairs``) or from two transcripts that share their prompt (``transcripts``)."""
        if not isinstance(row, dict):
            raise DataError("each row must be an object", **where)
        if layout == "pairs":
            messages = self._prompt(row, where)
            chosen = self._pair_response(row, self.chosen_field, messages, where)
            rejected = self._pair_response(row, self.rejected_field, messages, where)
            return messages, chosen, rejected
        messages, chosen = self._transcript(row, self.chosen_field, where)
        other, rejected = self._transcript(row, self.rejected_field, where)
        if other != messages:
            same = [a == b for a, b in zip(messages, other, strict=False)]
            turn = same.index(False) if False in same else len(same)
            raise DataError(
                f"the rejected transcript does not share the chosen one's prompt "
                f"(they differ at turn {turn + 1})",
                field=self.rejected_field,
                **where,
            )
        return messages, chosen, rejected

    def _merged(self, groups: list[_Group], has_scores: bool, stats: dict[str, int]) -> OfflineData:
        """The merged prompts as tables: the first ``n`` responses of each, the data's own pair
        (its first comparison among them) flagged, and the comparisons among them."""
        prompts, responses, comparisons = [], [], []
        for group in groups:
            keep = len(group.texts) if self.n is None else min(self.n, len(group.texts))
            prompts.append({"prompt_id": group.pid, "prompt": group.messages, "split": "train"})
            kept = [(i, j) for i, j in group.comparisons if i < keep and j < keep]
            stats["offline/prompts_with_several_pairs"] += len(group.comparisons) > 1
            data_pair = kept[0] if kept else (-1, -1)
            for k in range(keep):
                stats["offline/empty_responses"] += group.texts[k] == ""
                responses.append(
                    {
                        "prompt_id": group.pid,
                        "sample_id": k,
                        "response": group.texts[k],
                        "num_tokens": None,
                        "finish_reason": "offline",
                        "logp": math.nan,
                        "skip_reason": None,
                        "score": group.scores[k],
                        "data_chosen": k == data_pair[0],
                        "data_rejected": k == data_pair[1],
                    }
                )
            comparisons.extend(
                {"prompt_id": group.pid, "i": i, "j": j, "p": 1.0} for i, j in kept
            )
        columns = [*RESPONSE_COLUMNS, "data_chosen", "data_rejected", "score"]
        table = pd.DataFrame(responses, columns=columns)
        if not has_scores:
            table = table.drop(columns="score")
        else:
            table["score"] = table["score"].astype(float)
            stats["offline/nan_scores/score"] = int(table["score"].isna().sum())
        table["sample_id"] = table["sample_id"].astype("int64")
        table["num_tokens"] = table["num_tokens"].astype("Int64")
        table["logp"] = table["logp"].astype(float)
        table[["data_chosen", "data_rejected"]] = table[["data_chosen", "data_rejected"]].astype(
            bool
        )
        return _finish(prompts, table, comparisons, stats)

    def _pair_response(self, row: dict, name: str, prompt: list[dict], where: dict) -> str:
        """A response of the pairs layout: a string, one assistant message, or the prompt's
        messages followed by one assistant message (UltraFeedback-binarized repeats the user
        turn)."""
        if name not in row or row[name] is None:
            raise DataError(f"missing {name}", field=name, **where)
        value = _plain(row[name])
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise DataError(
                f"{name} must be a string or chat messages, got {type(value).__name__}",
                field=name,
                **where,
            )
        messages = self._messages(value, name, where)
        rest = messages[len(prompt) :] if messages[: len(prompt)] == prompt else messages
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise DataError(
                f"{name} must be the response: one assistant message, or the prompt's messages "
                f"followed by one assistant message (got {len(messages)} message(s) that "
                "differ from the prompt)",
                field=name,
                **where,
            )
        return rest[0]["content"]

    def _transcript(self, row: dict, name: str, where: dict) -> tuple[list[dict], str]:
        """A full conversation (HH-RLHF ``"\n\nHuman: ...\n\nAssistant: ..."`` or chat
        messages) split into its prompt (every turn but the last) and the response (the last
        turn, which must be the assistant's)."""
        if name not in row or row[name] is None:
            raise DataError(f"missing {name}", field=name, **where)
        value = _plain(row[name])
        if isinstance(value, str):
            messages = _split_transcript(value, name, where)
        elif isinstance(value, list):
            messages = self._messages(value, name, where)
        else:
            raise DataError(
                f"{name} must be a transcript string or chat messages, got "
                f"{type(value).__name__}",
                field=name,
                **where,
            )
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{name} must end with an assistant turn, got {messages[-1]['role']!r}",
                field=name,
                **where,
            )
        prompt = messages[:-1]
        if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
            raise DataError(
                f"{name} has no user turn before its last assistant turn (no prompt)",
                field=name,
                **where,
            )
        return prompt, messages[-1]["content"]

    def _messages(self, value: list, name: str, where: dict) -> list[dict]:
        try:
            return as_messages(value, name)
        except DataError as e:
            raise DataError(str(e).split(" (field")[0], field=name, **where) from None

    def _prompt_id(self, row: dict, line: int, where: dict) -> str:
        if self.id_field and self.id_field in row and row[self.id_field] is not None:
            value = row[self.id_field]
            if isinstance(value, (dict, list)):
                raise DataError(
                    f"id must be a string or a number, got {value!r:.60}",
                    field=self.id_field,
                    **where,
                )
            return str(value)
        return f"row-{line:06d}"

    def _prompt(self, row: dict, where: dict) -> list[dict]:
        if self.prompt_field not in row:
            raise DataError("missing prompt", field=self.prompt_field, **where)
        try:
            messages = as_messages(_plain(row[self.prompt_field]), self.prompt_field)
        except DataError as e:
            raise DataError(str(e).split(" (field")[0], field=self.prompt_field, **where) from None
        if not any(m["content"].strip() for m in messages):
            raise DataError("empty prompt", field=self.prompt_field, **where)
        return messages

    def _responses(self, row: dict, where: dict) -> tuple[list[str], list[Any]]:
        name = self.responses_field
        if name not in row:
            raise DataError("missing responses", field=name, **where)
        items = _plain(row[name])
        if not isinstance(items, list):
            raise DataError(
                f"responses must be a list, got {type(items).__name__}", field=name, **where
            )
        texts = []
        for k, item in enumerate(items):
            if self.response_key is not None:
                if not isinstance(item, dict):
                    raise DataError(
                        f"item {k} must be an object with {self.response_key!r}, got "
                        f"{type(item).__name__}",
                        field=name,
                        **where,
                    )
                text = item.get(self.response_key)
                label = f"{name}[{k}].{self.response_key}"
            else:
                text, label = item, f"{name}[{k}]"
            if not isinstance(text, str):
                hint = (
                    "; the items are objects: set sampler.response_key"
                    if isinstance(item, dict) and self.response_key is None
                    else ""
                )
                raise DataError(
                    f"a response must be a string, got {type(text).__name__}{hint}",
                    field=label,
                    **where,
                )
            texts.append(text)
        return texts, items

    def _scores(
        self, row: dict, items: list, key: str, count: int, where: dict, column: str
    ) -> list[float] | None:
        """One float per response (NaN where missing), or None when the field is absent."""
        if self.response_key is not None:  # inside each completion
            raw = [_lookup(item, key) for item in items[:count]]
            if all(v is _ABSENT for v in raw):
                return None
            return [
                _to_float(v, where, f"{self.responses_field}[{k}].{key}") for k, v in enumerate(raw)
            ]
        raw = _lookup(row, key)
        if raw is _ABSENT or raw is None:
            return None
        raw = _plain(raw)
        if not isinstance(raw, list):
            raise DataError(f"scores must be a list, got {type(raw).__name__}", field=key, **where)
        total = len(_plain(row[self.responses_field]))
        if len(raw) != total:
            raise DataError(
                f"{len(raw)} scores for {total} responses (column {column!r})", field=key, **where
            )
        return [_to_float(v, where, f"{key}[{k}]") for k, v in enumerate(raw[:count])]

    def _comparisons(self, row: dict, pid: str, total: int, count: int, where: dict) -> list[dict]:
        """The row's comparisons; those naming a response beyond ``n`` (kept: ``count`` of
        ``total``) are dropped."""
        name = self.comparisons_field
        if not name or name not in row or row[name] is None:
            return []
        items = _plain(row[name])
        if not isinstance(items, list):
            raise DataError(
                f"comparisons must be a list of [i, j, p], got {type(items).__name__}",
                field=name,
                **where,
            )
        out = []
        for k, item in enumerate(items):
            label = f"{name}[{k}]"
            item = _plain(item)
            if isinstance(item, dict):
                item = [item.get("i"), item.get("j"), item.get("p")]
            if not isinstance(item, list) or len(item) != 3:
                raise DataError(f"expected [i, j, p], got {item!r:.60}", field=label, **where)
            i, j, p = item
            for value in (i, j):
                # Parquet and Arrow store [i, j, p] as a list of doubles: 1.0 is index 1.
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float, np.integer, np.floating))
                    or not float(value).is_integer()
                ):
                    raise DataError(
                        f"i and j must be response indices, got {value!r}", field=label, **where
                    )
                if not 0 <= value < total:
                    raise DataError(
                        f"index {value} is out of range for {total} responses",
                        field=label,
                        **where,
                    )
            i, j = int(i), int(j)
            if i == j:
                raise DataError("a response compared with itself", field=label, **where)
            try:
                prob = float(p)
            except (TypeError, ValueError):
                prob = math.nan
            if not 0.0 <= prob <= 1.0:
                raise DataError(
                    f"p must be a probability in [0, 1], got {p!r}", field=label, **where
                )
            if i < count and j < count:
                out.append({"prompt_id": pid, "i": i, "j": j, "p": prob})
        return out



def _common_counts() -> dict[str, int]:
    """The counts every layout reports, zeroed."""
    keys = ("prompts", "responses", "empty_responses", "prompts_without_responses", "comparisons")
    return {f"offline/{k}": 0 for k in keys}


def _response_rows(
    pid: str, texts: list[str], columns: dict[str, list[float]], stats: dict[str, int]
) -> list[dict]:
    """The responses table's rows of one prompt (its responses in file order)."""
    if not texts:
        stats["offline/prompts_without_responses"] += 1
    rows = []
    for k, text in enumerate(texts):
        stats["offline/empty_responses"] += text == ""
        rows.append(
            {
                "prompt_id": pid,
                "sample_id": k,
                "response": text,
                "num_tokens": None,
                "finish_reason": "offline",
                "logp": math.nan,
                "skip_reason": None,
                **{c: v[k] for c, v in columns.items()},
            }
        )
    return rows


def _responses_table(
    responses: list[dict], score_fields: list[str], score_columns: list[str]
) -> pd.DataFrame:
    """The rows as a typed responses table holding the score columns some row had."""
    table = pd.DataFrame(responses, columns=[*RESPONSE_COLUMNS, *score_fields])
    table = table.drop(columns=[c for c in score_fields if c not in score_columns])
    table["sample_id"] = table["sample_id"].astype("int64")
    table["num_tokens"] = table["num_tokens"].astype("Int64")
    table["logp"] = table["logp"].astype(float)
    for column in score_columns:
        table[column] = table[column].astype(float)
    return table


def _finish(
    prompts: list[dict], table: pd.DataFrame, comparisons: list[dict], stats: dict[str, int]
) -> OfflineData:
    """The parsed file; when it has comparisons, each response's row also lists those in which
    it is ``i`` as ``[[j, p], ...]`` (the ``comparisons`` column, which ``scorer=data`` reads)."""
    frame = pd.DataFrame(comparisons, columns=list(COMPARISON_COLUMNS)).astype(
        {"i": "int64", "j": "int64", "p": float}
    )
    if len(frame):
        listed: dict[tuple[str, int], list[list[float]]] = {}
        for pid, i, j, p in frame.itertuples(index=False):
            listed.setdefault((pid, int(i)), []).append([float(j), float(p)])
        table[COMPARISONS_COLUMN] = [
            listed.get((pid, int(k)), [])
            for pid, k in zip(table["prompt_id"], table["sample_id"], strict=True)
        ]
    stats["offline/prompts"] = len(prompts)
    stats["offline/responses"] = len(table)
    stats["offline/comparisons"] = len(frame)
    return OfflineData(
        prompts=pd.DataFrame(prompts, columns=["prompt_id", "prompt", "split"]),
        responses=table,
        comparisons=frame,
        stats=stats,
    )


_RESERVED = frozenset(
    {"prompt_id", "sample_id", "response", "num_tokens", "finish_reason", "logp", "skip_reason",
     "data_chosen", "data_rejected", "comparisons"}
)
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


class _Group:
    """One prompt of a pair layout while its rows are merged."""

    def __init__(self, pid: str, messages: list[dict]):
        self.pid, self.messages = pid, messages
        self.texts: list[str] = []
        self.scores: list[float] = []
        self.index: dict[str, int] = {}
        self.comparisons: list[tuple[int, int]] = []

    def add(self, text: str, score: float, stats: dict[str, int]) -> int:
        """The sample id of ``text``: a new one, or the id it already has (its score kept, a
        different one counted as conflicting; a missing one filled)."""
        k = self.index.get(text)
        if k is None:
            k = self.index[text] = len(self.texts)
            self.texts.append(text)
            self.scores.append(score)
            return k
        stats["offline/duplicate_responses"] += 1
        if math.isnan(self.scores[k]):
            self.scores[k] = score
        elif not math.isnan(score) and score != self.scores[k]:
            stats["offline/conflicting_scores"] += 1
        return k


def _split_transcript(text: str, name: str, where: dict) -> list[dict]:
    r"""``"\n\nHuman: a\n\nAssistant: b"`` as [user a, assistant b] (contents stripped)."""
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(
            "a transcript must be turns '\\n\\nHuman: ...' and '\\n\\nAssistant: ...', "
            f"starting with one; got {text!r:.60}",
            field=name,
            **where,
        )
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _plain(value: Any) -> Any:
    """NumPy arrays (what pandas hands back for lists) as lists."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _lookup(obj: Any, key: str) -> Any:
    """The value at a dotted key path; a numeric part indexes a list. ``_ABSENT`` if missing."""
    for part in key.split("."):
        obj = _plain(obj)
        if isinstance(obj, dict):
            if part not in obj:
                return _ABSENT
            obj = obj[part]
        elif isinstance(obj, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(obj) <= index < len(obj):
                return _ABSENT
            obj = obj[index]
        else:
            return _ABSENT
    return obj


def _to_float(value: Any, where: dict, label: str) -> float:
    """A score as a float; missing markers, NaN and inf become NaN (counted by the caller)."""
    if value is _ABSENT or value is None:
        return math.nan
    if isinstance(value, bool):
        raise DataError(f"a score must be a number, got {value!r}", field=label, **where)
    if isinstance(value, str):
        if value.strip().lower() in MISSING_MARKERS:
            return math.nan
        try:
            value = float(value)
        except ValueError:
            raise DataError(
                f"a score must be a number, got {value!r:.40}", field=label, **where
            ) from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"a score must be a number, got {type(value).__name__}", field=label, **where
        ) from None
    return number if math.isfinite(number) else math.nan
