"""The built-in ``ifeval_mini`` task: the committed file, its shape, and that it is checkable."""

import json
import re
from collections import Counter

import pandas as pd
import pytest

from sweetspot.scoring.constraints import CHECKERS, parse_constraints
from sweetspot.scoring.rules import RulesScorer
from sweetspot.tasks import ifeval_mini
from sweetspot.tasks.ifeval_mini import CONFLICTS, data_path, generate, load_ifeval_mini


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_ifeval_mini()


def _constraints(frame: pd.DataFrame) -> list[list[dict]]:
    return [json.loads(c) for c in frame["constraints"]]


def test_shape_ids_and_splits(frame):
    assert list(frame.columns) == ["prompt_id", "prompt", "split", "constraints"]
    assert len(frame) == 800
    assert frame["prompt_id"].is_unique
    assert list(frame["prompt_id"]) == [f"ifeval-{i:04d}" for i in range(1, 801)]
    assert set(frame["split"]) == {"train", "heldout"}
    assert (frame["split"] == "heldout").sum() == 120  # the documented 15%
    assert (frame["split"] == "train").sum() == 680
    for prompt in frame["prompt"]:
        assert len(prompt) == 1 and prompt[0]["role"] == "user" and prompt[0]["content"]
    assert len(load_ifeval_mini("heldout")) == (frame["split"] == "heldout").sum()


def test_every_type_used_and_one_to_three_each(frame):
    rows = _constraints(frame)
    assert {c["type"] for row in rows for c in row} == set(CHECKERS)
    assert all(1 <= len(row) <= 3 for row in rows)


def test_every_constraint_is_checkable(frame):
    for pid, text in zip(frame["prompt_id"], frame["constraints"], strict=True):
        items = parse_constraints(text, where=pid)  # raises on unknown types or bad args
        assert not any(frozenset((a["type"], b["type"])) in CONFLICTS
                       for a in items for b in items if a is not b)
    responses = frame.assign(response="Sure. Here is a short answer about the topic.")
    out = RulesScorer().score(responses)
    assert out["score/rules"].between(0, 1).all()


def _mentions(text: str, constraint: dict) -> list[str]:
    """What the prompt must say for a reader to know the constraint."""
    args = constraint["args"]
    numbers = [str(args[k]) for k in ("min", "max", "count") if k in args]
    words = {
        "keywords_include": args.get("keywords", []), "keywords_exclude": args.get("keywords", []),
        "keyword_frequency": [args.get("keyword", "")], "starts_with": [args.get("phrase", "")],
        "ends_with": [args.get("phrase", "")], "word_count": ["words"],
        "sentence_count": ["sentences"], "paragraph_count": ["paragraphs"],
        "bullet_count": ["bullet"], "placeholder_count": ["square brackets"],
        "lowercase": ["lowercase"], "uppercase": ["uppercase"], "json_format": ["JSON"],
        "no_commas": ["comma"], "title": ["<<"],
    }[constraint["type"]]
    return numbers + list(words)


def test_prompt_text_states_each_constraint(frame):
    for prompt, text in zip(frame["prompt"], frame["constraints"], strict=True):
        content = prompt[0]["content"]
        for constraint in json.loads(text):
            for needle in _mentions(content, constraint):
                assert needle in content, (needle, content)


def test_a_satisfying_response_scores_one():
    # Hand-written answer to a prompt with three compatible constraints.
    cons = [{"id": "lowercase", "type": "lowercase", "args": {}},
            {"id": "keywords_include", "type": "keywords_include", "args": {"keywords": ["rain"]}},
            {"id": "word_count", "type": "word_count", "args": {"max": 30}}]
    row = pd.DataFrame({"prompt_id": ["x"], "constraints": [json.dumps(cons)],
                        "response": ["sunlight enters rain drops and bends into colors."]})
    assert RulesScorer().score(row)["score/rules"].iloc[0] == 1.0


def test_committed_file_matches_generator():
    committed = [json.loads(line) for line in data_path().read_text().splitlines() if line]
    assert committed == generate()


def test_generator_is_deterministic_and_seeded():
    assert generate(seed=1, num_prompts=40) == generate(seed=1, num_prompts=40)
    assert generate(seed=1, num_prompts=40) != generate(seed=2, num_prompts=40)
    assert len(ifeval_mini.TOPICS) >= 160


def _type_shares(rows: list[list[dict]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per type: the share of prompts that carry it and its share of all constraints."""
    prompts = Counter(t for row in rows for t in {c["type"] for c in row})
    instances = Counter(c["type"] for row in rows for c in row)
    n_instances = sum(instances.values())
    return ({t: prompts[t] / len(rows) for t in CHECKERS},
            {t: instances[t] / n_instances for t in CHECKERS})


def test_heldout_types_in_training_proportions(frame):
    rows = _constraints(frame)
    train = [r for r, s in zip(rows, frame["split"], strict=True) if s == "train"]
    heldout = [r for r, s in zip(rows, frame["split"], strict=True) if s == "heldout"]
    (train_p, train_i), (held_p, held_i) = _type_shares(train), _type_shares(heldout)
    for t in CHECKERS:
        assert train_p[t] > 0.05 and held_p[t] > 0.05, t  # every type is really represented
        assert abs(held_p[t] - train_p[t]) <= 0.03, (t, held_p[t], train_p[t])
        assert abs(held_i[t] - train_i[t]) <= 0.03, (t, held_i[t], train_i[t])
    # The number of constraints per prompt is split alike too.
    for k in (1, 2, 3):
        share_train = sum(len(r) == k for r in train) / len(train)
        share_held = sum(len(r) == k for r in heldout) / len(heldout)
        assert abs(share_held - share_train) <= 0.03, (k, share_held, share_train)


def test_many_distinct_topics(frame):
    # A prompt opens with its task sentence; count the distinct openings.
    openings = {re.match(r"[^.?!]*[.?!]", p[0]["content"]).group(0) for p in frame["prompt"]}
    assert len(openings) >= 160
    heldout_openings = {re.match(r"[^.?!]*[.?!]", p[0]["content"]).group(0)
                        for p, s in zip(frame["prompt"], frame["split"], strict=True)
                        if s == "heldout"}
    assert len(heldout_openings) >= 80  # held-out prompts are spread over many topics


def test_split_of_a_small_generation_is_exact():
    rows = generate(seed=3, num_prompts=60)
    assert sum(r["split"] == "heldout" for r in rows) == 9  # round(0.15 * 60)
