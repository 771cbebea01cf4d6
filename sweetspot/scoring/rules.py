"""Verifiable rewards: instruction constraints met, or an exact / numeric reference answer,
times a quality factor that puts degenerate responses (loops, cut-offs, empty) in the lower tail."""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweetspot.errors import DataError
from sweetspot.scoring.base import Scorer
from sweetspot.scoring.constraints import (
    CHECKERS,
    DEFAULT_PARTIAL_CREDIT_WIDTH,
    parse_constraints,
    words,
)
from sweetspot.validation import at_least, non_negative, positive, probability, require

# A number as people write it: optional sign, thousands separators, decimals.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_SPACES = re.compile(r"\s+")
_EDGE_PUNCT = " \t\n\"'`*.,;:!?"


def _present(value: object) -> bool:
    """A cell holds data: not None/NaN, and not an empty string or empty JSON list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return not (isinstance(value, str) and value.strip() in ("", "[]"))


def normalise_answer(text: str) -> str:
    """Case, spacing and surrounding quotes/punctuation do not change an answer."""
    return _SPACES.sub(" ", str(text).casefold()).strip(_EDGE_PUNCT)


def parse_number(text: str) -> float | None:
    try:
        return float(str(text).strip().replace(",", "").lstrip("$"))
    except ValueError:
        return None


def last_number(text: str) -> float | None:
    """The last number in a response: models state the final answer last."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None



def repeated_ngram_share(tokens: list[str], n: int) -> float:
    """``1 - distinct / total`` over the n-grams of ``tokens`` (Welleck et al.'s seq-rep-n): 0
    for text that never repeats an n-gram, near 1 for a loop. 0 with fewer than ``n`` tokens."""
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    distinct = len(set(zip(*(tokens[i:] for i in range(n)), strict=False)))
    return 1.0 - distinct / total


def moving_type_token_ratio(tokens: list[str], window: int) -> float:
    """Mean share of distinct tokens over every run of ``window`` tokens (MATTR, Covington and
    McFall 2010); the plain type-token ratio when the text is shorter than a window. Unlike the
    plain ratio it does not fall with length, so it ranks lexical variety, not brevity. 0 for
    no tokens."""
    if len(tokens) <= window:
        return len(set(tokens)) / len(tokens) if tokens else 0.0
    counts = Counter(tokens[:window])
    distinct_sum = len(counts)
    for old, new in zip(tokens, tokens[window:], strict=False):
        counts[old] -= 1
        if not counts[old]:
            del counts[old]
        counts[new] += 1
        distinct_sum += len(counts)
    return distinct_sum / ((len(tokens) - window + 1) * window)


@dataclass(kw_only=True)
class RulesScorer(Scorer):
    """Reward = quality factor x graded constraint credit.

    For a response with constraints, each checker of ``sweetspot.scoring.constraints`` gives a
    credit ``c_i`` in [0, 1] that is exactly 1.0 when, and only when, the strict IFEval-style check
    passes (the formulas are in that module's docstring). With ``c`` their mean, ``b =
    base_reward`` and ``q`` the quality factor::

        reward = q * (c + b * (1 - c))

    so a fluent answer that meets nothing still ranks above a degenerate one, and an answer that
    meets everything with ``q = 1`` scores 1. The quality factor is 0 for a response without a
    single word (blank, or only symbols), else::

        q = (1 - loop_penalty * rep)
            * (1 - diversity_weight * (1 - mattr))
            * (1 - truncation_penalty * [finish_reason == "length"])

    ``rep`` is the share of repeated word ``loop_ngram``-grams (``repeated_ngram_share``: ~0 for
    ordinary text, ~0.9 for a phrase looped ten times), ``mattr`` the moving type-token ratio of
    the words over windows of ``diversity_window`` (``moving_type_token_ratio``: a small,
    length-robust tie-break that ranks lexical variety among otherwise equal answers), and the
    last factor applies to a response the sampler cut off at its token limit (a table without a
    ``finish_reason`` column counts none as cut off). Words are compared case-folded. Setting
    ``loop_penalty``, ``diversity_weight``, ``truncation_penalty`` and ``base_reward`` to 0 gives
    the plain mean credit (a wordless response still scores 0).

    Rows with a ``reference`` and no ``constraints`` get one credit, 1/0 against it: a numeric
    reference matches the last number in the response within ``numeric_tol`` (absolute); any
    other reference must equal the whole response after ``normalise_answer``. The same reward
    formula applies, with ``c`` that credit.

    Output columns (``<name>`` is ``name``, ``rules`` by default):

    - ``score/<name>``: the reward above.
    - ``<name>/detail``: JSON object, constraint id -> graded credit (``{"reference": 0/1}`` for
      reference rows). A constraint is strictly met exactly when its credit is 1.0: per-constraint
      counts come from ``detail == 1.0``.
    - ``<name>/passed``: share of the row's constraints strictly met; its mean over rows weighted
      by the number of constraints is IFEval's instruction-level strict accuracy.
    - ``<name>/strict``: 1.0 when every constraint is strictly met, else 0.0; its mean is IFEval's
      prompt-level strict accuracy.
    - ``<name>/quality``: the quality factor ``q``. It never changes detail, passed or strict.

    A blank response gets credit 0 for every constraint (and so fails every strict check) and is
    counted in ``last_stats["empty_responses"]``.
    """

    name: str = "rules"
    partial_credit_width: float = DEFAULT_PARTIAL_CREDIT_WIDTH
    numeric_tol: float = 1e-6
    case_sensitive_keywords: bool = False
    base_reward: float = 0.1
    loop_penalty: float = 1.0
    loop_ngram: int = 3
    diversity_weight: float = 0.1
    diversity_window: int = 25
    truncation_penalty: float = 0.25

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        positive("partial_credit_width", self.partial_credit_width)
        non_negative("numeric_tol", self.numeric_tol)
        for field in ("base_reward", "loop_penalty", "diversity_weight", "truncation_penalty"):
            probability(field, getattr(self, field))
        at_least("loop_ngram", self.loop_ngram, 1)
        at_least("diversity_window", self.diversity_window, 2)
        self.last_stats: dict = {}

    def quality(self, response: str, truncated: bool = False) -> float:
        """The quality factor ``q`` of the class docstring."""
        tokens = [w.casefold() for w in words(response)] if isinstance(response, str) else []
        if not tokens:
            return 0.0
        loop = 1.0 - self.loop_penalty * repeated_ngram_share(tokens, self.loop_ngram)
        variety = 1.0 - self.diversity_weight * (
            1.0 - moving_type_token_ratio(tokens, self.diversity_window))
        cut = 1.0 - self.truncation_penalty * truncated
        return loop * variety * cut

    def _score_reference(self, response: str, reference: object) -> float:
        target = parse_number(reference)
        if target is not None:
            got = last_number(response)
            return float(got is not None and abs(got - target) <= self.numeric_tol)
        return float(normalise_answer(response) == normalise_answer(reference))

    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        for column in ("prompt_id", "response"):
            if column not in responses.columns:
                raise DataError(f"responses table has no '{column}' column", field=column)
        n = len(responses)
        none = [None] * n
        constraints = responses["constraints"] if "constraints" in responses else none
        references = responses["reference"] if "reference" in responses else none
        finish = responses["finish_reason"] if "finish_reason" in responses else none
        rewards, passed, strict, quality = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        details = [""] * n
        parsed: dict[str, list[dict]] = {}
        by_type: dict[str, list[float]] = defaultdict(list)
        modes: Counter = Counter()
        empty = truncated_rows = met = total = 0
        rows = zip(responses["prompt_id"], responses["response"], constraints, references,
                   finish, strict=True)
        for i, (prompt_id, response, cons, reference, reason) in enumerate(rows):
            if _present(cons):
                if not isinstance(cons, str):
                    raise DataError(f"prompt {prompt_id!r}: constraints must be a JSON string, "
                                    f"got {type(cons).__name__}", field="constraints")
                if cons not in parsed:
                    parsed[cons] = parse_constraints(cons, where=f"prompt {prompt_id!r}")
                items, mode = parsed[cons], "constraints"
            elif _present(reference):
                items, mode = None, "reference"
            else:
                raise DataError(f"prompt {prompt_id!r} has neither constraints nor a reference",
                                field="constraints")
            modes[mode] += 1
            is_empty = not isinstance(response, str) or not response.strip()
            empty += is_empty
            if items is None:
                scores = {"reference": 0.0 if is_empty else
                          self._score_reference(response, reference)}
            else:
                scores = {}
                for item in items:
                    value = 0.0 if is_empty else CHECKERS[item["type"]](
                        response, item["args"], width=self.partial_credit_width,
                        case_sensitive=self.case_sensitive_keywords)
                    scores[item["id"]] = value
                    by_type[item["type"]].append(value)
            values = list(scores.values())
            credit = sum(values) / len(values)
            hits = sum(v == 1.0 for v in values)
            met, total = met + hits, total + len(values)
            is_cut = reason == "length"
            truncated_rows += is_cut
            quality[i] = 0.0 if is_empty else self.quality(response, is_cut)
            rewards[i] = quality[i] * (credit + self.base_reward * (1.0 - credit))
            passed[i] = hits / len(values)
            strict[i] = float(hits == len(values))
            details[i] = json.dumps(scores)
        self.last_stats = {
            "responses": n,
            "empty_responses": int(empty),
            "truncated_responses": int(truncated_rows),
            "constraint_rows": modes["constraints"],
            "reference_rows": modes["reference"],
            "mean_quality": float(quality.mean()) if n else float("nan"),
            "strict_prompt_level": float(strict.mean()) if n else float("nan"),
            "strict_instruction_level": met / total if total else float("nan"),
            "mean_by_type": {t: float(np.mean(v)) for t, v in sorted(by_type.items())},
        }
        return pd.DataFrame({self.column: rewards, f"{self.name}/detail": details,
                             f"{self.name}/passed": passed, f"{self.name}/strict": strict,
                             f"{self.name}/quality": quality}, index=responses.index)
