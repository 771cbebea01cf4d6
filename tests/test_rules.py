"""Constraint checkers and the rules scorer, against hand-written responses and hand arithmetic."""

import dataclasses
import json
import math

import pandas as pd
import pytest

from sweetspot.config import build_node, validate
from sweetspot.errors import ConfigError, DataError
from sweetspot.scoring.constraints import (
    CHECKERS,
    bounded_credit,
    check,
    count_paragraphs,
    count_sentences,
    count_words,
    parse_constraints,
)
from sweetspot.scoring.rules import RulesScorer

# (type, args, a response that meets it, a response that does not)
CASES = [
    ("word_count", {"min": 3, "max": 5}, "one two three four", "one two"),
    ("sentence_count", {"count": 2}, "It rains. The sky is grey!", "It rains."),
    ("paragraph_count", {"count": 2}, "First part.\n\nSecond part.", "Only one block.\nStill."),
    ("bullet_count", {"count": 3}, "Intro:\n* a\n- b\n  * c", "* a\n* b"),
    ("placeholder_count", {"min": 2}, "Dear [name], see you at [place].", "Dear [name]."),
    ("keyword_frequency", {"keyword": "rain", "min": 2}, "Rain, rain, go away.", "It rained."),
    ("keywords_include", {"keywords": ["sun", "light"]}, "The Sun gives light.", "It is dark."),
    ("keywords_exclude", {"keywords": ["rain"]}, "A dry and sunny day.", "Heavy rains fell."),
    ("lowercase", {}, "all quiet here.", "All quiet here."),
    ("uppercase", {}, "ALL QUIET [NAME].", "ALL QUIEt."),
    ("starts_with", {"phrase": "Sure"}, "  sure, here it is.", "Surely not."),
    ("ends_with", {"phrase": "That is all."}, "Done. That is all.\n", "That is all. More."),
    ("json_format", {}, '```json\n{"answer": "blue"}\n```', "answer: blue"),
    ("no_commas", {}, "No commas here.", "One, two."),
    ("title", {}, "<<Rainbows>>\nLight bends.", "<< >> no title"),
]


def test_every_type_has_a_case():
    assert {c[0] for c in CASES} == set(CHECKERS)


@pytest.mark.parametrize("ctype, args, good, bad", CASES, ids=[c[0] for c in CASES])
def test_checker_positive_and_negative(ctype, args, good, bad):
    assert CHECKERS[ctype](good, args) == 1.0
    assert CHECKERS[ctype](bad, args) < 1.0


def test_counting_rules():
    assert count_words("Don't stop: well-known 3.5 ideas!") == 7  # don't|stop|well|known|3|5|ideas
    assert count_sentences("Dr. Smith paid 3.50 dollars. Why? Because!") == 4
    assert count_sentences("no terminal punctuation") == 1
    assert count_paragraphs("a\n \nb\n\n\nc\n") == 3


def test_counting_words_vs_plain_split():
    text = "The quick brown fox jumps over the lazy dog and keeps running far away"
    assert count_words(text) == len(text.split())


def test_graded_credit_hand_computed():
    # 30 words, bounds 50..100, width 0.5: d = 20/50 = 0.4, credit = e^(-0.4/0.5) = e^-0.8
    assert bounded_credit(30, 50, 100, 0.5) == pytest.approx(0.44932896)
    # 120 words, max 100, width 1: d = 0.2, credit e^-0.2
    assert bounded_credit(120, None, 100, 1.0) == pytest.approx(0.81873075)
    # far off: small but never 0 (misses of different size never tie); inside: exactly 1
    assert 0 < bounded_credit(300, None, 100, 0.5) == pytest.approx(math.e ** -4)
    assert bounded_credit(300, None, 100, 0.5) > bounded_credit(301, None, 100, 0.5)
    assert bounded_credit(75, 50, 100, 0.5) == 1.0
    # a bound of 0 uses a scale of 1: 1 bullet when none allowed, width 2 -> e^-0.5
    assert bounded_credit(1, None, 0, 2.0) == pytest.approx(0.60653066)


def test_graded_checkers_hand_computed():
    words = " ".join(["w"] * 30)
    assert check({"type": "word_count", "args": {"min": 50, "max": 100}}, words,
                 width=0.5) == pytest.approx(0.44932896)
    # 2 bullets, exactly 3 wanted, width 1: d = 1/3, credit = e^(-1/3)
    assert CHECKERS["bullet_count"]("* a\n* b", {"count": 3}) == pytest.approx(0.71653131)
    # 1 of 2 keywords present
    assert CHECKERS["keywords_include"]("sun only", {"keywords": ["sun", "moon"]}) == 0.5
    # "rain" once, at least 3 wanted, width 1: d = 2/3, credit e^(-2/3)
    assert CHECKERS["keyword_frequency"]("rain", {"keyword": "rain", "min": 3},
                                         width=1.0) == pytest.approx(0.51341712)


def test_case_sensitive_keywords():
    args = {"keywords": ["Paris"]}
    assert CHECKERS["keywords_include"]("paris is big", args) == 1.0
    assert CHECKERS["keywords_include"]("paris is big", args, case_sensitive=True) == 0.0
    assert CHECKERS["ends_with"]("bye NOW", {"phrase": "now"}, case_sensitive=True) == 0.0


def test_unknown_type_and_bad_args_are_data_errors():
    with pytest.raises(DataError) as err:
        check({"type": "haiku", "args": {}}, "x")
    assert err.value.field == "type"
    bad = json.dumps([{"id": "a", "type": "word_count", "args": {"min": 5, "max": 2}}])
    with pytest.raises(DataError) as err:
        parse_constraints(bad, where="prompt 'p1'")
    assert "p1" in str(err.value) and err.value.field.startswith("constraints[0]")
    with pytest.raises(DataError) as err:
        parse_constraints(json.dumps([{"id": "a", "type": "nope", "args": {}}]))
    assert err.value.field == "constraints[0].type"
    dup = [{"id": "a", "type": "title", "args": {}}, {"id": "a", "type": "no_commas", "args": {}}]
    with pytest.raises(DataError):
        parse_constraints(json.dumps(dup))


def _frame() -> pd.DataFrame:
    cons = json.dumps([
        {"id": "len", "type": "word_count", "args": {"min": 4, "max": 8}},
        {"id": "kw", "type": "keywords_include", "args": {"keywords": ["sun"]}},
        {"id": "lc", "type": "lowercase", "args": {}},
    ])
    return pd.DataFrame({
        "prompt_id": ["p1", "p1", "p1", "p2", "p2", "p3"],
        "sample_id": [0, 1, 2, 0, 1, 0],
        "response": ["the sun is bright today", "The Moon.", "", "The answer is 1,234.", "42",
                     "  Paris. "],
        "constraints": [cons, cons, cons, None, None, None],
        "reference": [None, None, None, "1234", "1234", "paris"],
    }, index=[10, 11, 12, 13, 14, 15])


def test_scorer_reward_passed_and_strict_follow_details():
    plain = RulesScorer(base_reward=0, loop_penalty=0, diversity_weight=0, truncation_penalty=0)
    out = plain.score(_frame())
    assert list(out.index) == [10, 11, 12, 13, 14, 15]
    for reward, detail, passed, strict, quality in zip(
            out["score/rules"], out["rules/detail"], out["rules/passed"], out["rules/strict"],
            out["rules/quality"], strict=True):
        values = list(json.loads(detail).values())
        # with every quality knob at 0 the reward is the plain mean credit (0 without a word)
        assert reward == pytest.approx(quality * sum(values) / len(values))
        assert passed == pytest.approx(sum(v == 1.0 for v in values) / len(values))
        assert strict == float(all(v == 1.0 for v in values))
    details = [json.loads(d) for d in out["rules/detail"]]
    assert details[0] == {"len": 1.0, "kw": 1.0, "lc": 1.0}
    # "The Moon.": 2 words vs min 4, width 1: e^-(2/4); no "sun"; lowercase 'he', 'oon' of
    # 'The Moon' kept, 'T' and 'M' changed: 5/7
    assert details[1] == pytest.approx({"len": 0.60653066, "kw": 0.0, "lc": 5 / 7})
    assert details[2] == {"len": 0.0, "kw": 0.0, "lc": 0.0}  # empty response
    assert list(out["score/rules"].iloc[3:]) == [1.0, 0.0, 1.0]
    assert list(out["rules/strict"]) == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert list(out["rules/quality"]) == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    stats = plain.last_stats
    assert stats["empty_responses"] == 1 and stats["truncated_responses"] == 0
    assert stats["constraint_rows"] == 3 and stats["reference_rows"] == 3
    assert stats["strict_prompt_level"] == pytest.approx(3 / 6)
    # constraints met: 3 + 0 + 0 + 1 + 0 + 1 of 3 + 3 + 3 + 1 + 1 + 1
    assert stats["strict_instruction_level"] == pytest.approx(5 / 12)


def test_default_reward_hand_computed():
    out = RulesScorer().score(_frame())
    # row 1 "The Moon.": credits (e^-0.5, 0, 5/7), c = their mean; 2 distinct words, so no
    # repeated 3-gram and a type-token ratio of 1: q = 1; reward = c + 0.1 (1 - c)
    c = (0.60653066 + 0 + 5 / 7) / 3
    assert out["score/rules"].iloc[1] == pytest.approx(c + 0.1 * (1 - c))
    # a correct reference answer of one word: q = 1, c = 1
    assert out["score/rules"].iloc[5] == 1.0
    # the wrong numeric answer "42" keeps the base reward
    assert out["score/rules"].iloc[4] == pytest.approx(0.1)
    assert out["score/rules"].iloc[2] == 0.0  # empty


def test_partial_credit_width_changes_reward():
    frame = _frame().iloc[[1]]
    # "The Moon." with width 0.25: 2 words vs min 4 -> d = 0.5, e^(-0.5/0.25) = e^-2
    got = RulesScorer(partial_credit_width=0.25, base_reward=0).score(frame)
    assert json.loads(got["rules/detail"].iloc[0])["len"] == pytest.approx(0.13533528)
    assert got["score/rules"].iloc[0] == pytest.approx((0.13533528 + 5 / 7) / 3)


def test_numeric_tolerance():
    frame = pd.DataFrame({"prompt_id": ["q"], "response": ["about 3.14"], "reference": ["3.1416"]})
    assert RulesScorer().score(frame)["rules/strict"].iloc[0] == 0.0
    assert RulesScorer(numeric_tol=0.01).score(frame)["rules/strict"].iloc[0] == 1.0
    assert RulesScorer(numeric_tol=0.01).score(frame)["score/rules"].iloc[0] == 1.0


def test_row_with_neither_names_prompt_and_field():
    frame = pd.DataFrame({"prompt_id": ["lonely"], "response": ["hi"], "reference": [None]})
    with pytest.raises(DataError) as err:
        RulesScorer().score(frame)
    assert "lonely" in str(err.value) and err.value.field == "constraints"


def test_config_validation_and_yaml_matches_fields(make_cfg):
    with pytest.raises(ConfigError):
        RulesScorer(partial_credit_width=0)
    with pytest.raises(ConfigError):
        RulesScorer(numeric_tol=-1)
    bad_values = ({"base_reward": 1.5}, {"loop_penalty": -0.1}, {"truncation_penalty": 2},
                  {"diversity_weight": -1}, {"loop_ngram": 0}, {"diversity_window": 1})
    for bad in bad_values:
        with pytest.raises(ConfigError):
            RulesScorer(**bad)
    # scorer=rules as composed (conf/scorer/rules.yaml over its schema): exactly the class's
    # fields and _target_, building the default scorer; a bad value is refused by name
    node = make_cfg("scorer=rules").scorer
    fields = {f.name for f in dataclasses.fields(RulesScorer)}
    assert set(node.keys()) - {"_target_"} == fields
    assert node._target_ == f"{RulesScorer.__module__}.{RulesScorer.__qualname__}"
    scorer = build_node(node, "scorer")
    assert type(scorer) is RulesScorer
    assert scorer == RulesScorer()
    for bad in bad_values:
        ((key, value),) = bad.items()
        with pytest.raises(ConfigError) as error:
            validate(make_cfg("scorer=rules", f"scorer.{key}={value}"))
        assert error.value.field == f"scorer.{key}"


def test_ten_thousand_responses_score_like_their_first_copy():
    """Scoring is per row: 1,700 copies of a frame score as the frame does (its speed is
    measured in benchmarks/, not asserted here)."""
    frame = pd.concat([_frame()] * 1700, ignore_index=True)
    scorer = RulesScorer()
    out = scorer.score(frame)
    once = scorer.score(_frame())["score/rules"].to_numpy()
    assert len(out) == len(frame) and out["score/rules"].between(0, 1).all()
    assert (out["score/rules"].to_numpy().reshape(1700, -1) == once).all()
