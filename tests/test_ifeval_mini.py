"""The built-in ``ifeval_mini`` task: the committed file, its shape, and that it is checkable."""

import json

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
    assert len(frame) >= 240
    assert frame["prompt_id"].is_unique
    assert all(pid.startswith("ifeval-") for pid in frame["prompt_id"])
    assert set(frame["split"]) == {"train", "heldout"}
    heldout = (frame["split"] == "heldout").mean()
    assert 0.10 <= heldout <= 0.20
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
    assert len(ifeval_mini.TOPICS) >= 60
