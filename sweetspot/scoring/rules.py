"""Verifiable rewards: instruction constraints met, or an exact / numeric reference answer."""

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
from sweetspot.scoring.constraints import CHECKERS, DEFAULT_PARTIAL_CREDIT_WIDTH, parse_constraints
from sweetspot.validation import non_negative, positive, require

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


@dataclass(kw_only=True)
class RulesScorer(Scorer):
    """Reward = mean over the prompt's constraints of each checker's score in [0, 1].

    Rows with a ``reference`` and no ``constraints`` are scored 1/0 against it: a numeric
    reference matches the last number in the response within ``numeric_tol`` (absolute); any
    other reference must equal the whole response after ``normalise_answer``. An empty response
    scores 0 and is counted in ``last_stats["empty_responses"]``.
    """

    name: str = "rules"
    partial_credit_width: float = DEFAULT_PARTIAL_CREDIT_WIDTH
    numeric_tol: float = 1e-6
    case_sensitive_keywords: bool = False

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        positive("partial_credit_width", self.partial_credit_width)
        non_negative("numeric_tol", self.numeric_tol)
        self.last_stats: dict = {}

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
        rewards, passed, details = np.zeros(n), np.zeros(n), [""] * n
        parsed: dict[str, list[dict]] = {}
        by_type: dict[str, list[float]] = defaultdict(list)
        modes: Counter = Counter()
        empty = 0
        rows = zip(responses["prompt_id"], responses["response"], constraints, references,
                   strict=True)
        for i, (prompt_id, response, cons, reference) in enumerate(rows):
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
            rewards[i] = sum(values) / len(values)
            passed[i] = sum(v == 1.0 for v in values) / len(values)
            details[i] = json.dumps(scores)
        self.last_stats = {
            "responses": n,
            "empty_responses": int(empty),
            "constraint_rows": modes["constraints"],
            "reference_rows": modes["reference"],
            "mean_by_type": {t: float(np.mean(v)) for t, v in sorted(by_type.items())},
        }
        return pd.DataFrame({self.column: rewards, f"{self.name}/detail": details,
                             f"{self.name}/passed": passed}, index=responses.index)
