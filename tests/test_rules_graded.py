"""Graded credit of every checker and the rules scorer's quality factor, against hand arithmetic
on crafted strings, plus the property that a credit is 1.0 exactly when the strict check passes."""

import json
import math
import re
import statistics

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweetspot.scoring.constraints import CHECKERS
from sweetspot.scoring.rules import RulesScorer, moving_type_token_ratio, repeated_ngram_share

E = math.e

# (type, args, response, expected credit worked out by hand)
GRADED = [
    # 45 words for "at most 30", width 1: d = 15/30, e^-0.5
    ("word_count", {"max": 30}, " ".join(["word"] * 45), E ** -0.5),
    # 5 sentences for "at most 2": d = 3/2
    ("sentence_count", {"max": 2}, "A. B. C. D. E.", E ** -1.5),
    # one block for exactly 2: d = 1/2
    ("paragraph_count", {"count": 2}, "Only one block.\nStill.", E ** -0.5),
    # no bullet for exactly 3: d = 3/3
    ("bullet_count", {"count": 3}, "No list here.", E ** -1),
    # 1 placeholder for at least 3: d = 2/3
    ("placeholder_count", {"min": 3}, "Dear [name].", E ** (-2 / 3)),
    # "rain" twice when at most 1 allowed... as a frequency: at least 4, found 2: d = 2/4
    ("keyword_frequency", {"keyword": "rain", "min": 4}, "Rain and more rain.", E ** -0.5),
    # 2 of 3 keywords
    ("keywords_include", {"keywords": ["sun", "moon", "star"]}, "The Sun and the stars.", 2 / 3),
    # "rain" occurs 3 times (rain, rains, raining): 1 / (1 + 3)
    ("keywords_exclude", {"keywords": ["rain"]}, "rain, rains, raining", 1 / 4),
    # two forbidden words, 1 + 1 occurrences
    ("keywords_exclude", {"keywords": ["sun", "moon"]}, "sun and moon", 1 / 3),
    # 'Hello World': 10 letters, H and W upper: 8/10 lowercase
    ("lowercase", {}, "Hello World", 8 / 10),
    # 'HELLO world!': 5 of 10 letters upper
    ("uppercase", {}, "HELLO world!", 5 / 10),
    # no letter at all
    ("lowercase", {}, "1234 !!", 0.0),
    # 'sore' vs 'sure': matching 's' and 're' = 3 chars, ratio 2*3/8, times 0.9
    ("starts_with", {"phrase": "Sure"}, "Sore, fine.", 0.9 * 6 / 8),
    # 'Surely': the first 4 characters match but the word runs on: 0.9 * 1
    ("starts_with", {"phrase": "Sure"}, "Surely not.", 0.9),
    # closing 'that is all!' vs 'that is all.': 11 of 12 match, 0.9 * 22/24
    ("ends_with", {"phrase": "That is all."}, "Done. That is all!", 0.9 * 22 / 24),
    # a valid object of 8 characters inside a 14-character text: 0.5 + 0.4 * 8/14
    ("json_format", {}, 'Here: {"a": 1}', 0.5 + 0.4 * 8 / 14),
    # an unterminated object filling the whole text: 0.2 * 1
    ("json_format", {}, '{"a": 1', 0.2),
    # a 3-character span '{a}' that does not parse, in 7 characters
    ("json_format", {}, "x {a} y", 0.2 * 3 / 7),
    ("json_format", {}, "answer: blue", 0.0),
    # 3 commas: 1/4
    ("no_commas", {}, "a, b, c, d", 1 / 4),
    ("title", {}, "<< >> no title", 0.5),
    ("title", {}, "<Rainbows>\nLight bends.", 0.5),
    ("title", {}, "# Rainbows\nLight bends.", 0.25),
    ("title", {}, "**Rainbows**\nLight bends.", 0.25),
    ("title", {}, "Light bends.", 0.0),
]


def test_graded_cases_cover_every_type():
    assert {c[0] for c in GRADED} == set(CHECKERS)


@pytest.mark.parametrize("ctype, args, response, expected", GRADED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GRADED)])
def test_graded_credit_hand_computed(ctype, args, response, expected):
    got = CHECKERS[ctype](response, args)
    assert got == pytest.approx(expected, abs=1e-9)
    assert got < 1.0


def test_graded_credit_orders_near_above_far():
    # more words over the limit, less credit; fewer commas, more credit
    counts = [CHECKERS["word_count"](" ".join(["w"] * k), {"max": 30}) for k in (31, 40, 60, 90)]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 4
    commas = [CHECKERS["no_commas"]("," * k, {}) for k in range(5)]
    assert commas == sorted(commas, reverse=True) and commas[0] == 1.0
    shares = [CHECKERS["lowercase"](text, {}) for text in ("all fine", "All fine", "ALL Fine")]
    assert shares == sorted(shares, reverse=True) and shares[0] == 1.0


# ---- strict pass <=> credit == 1.0 ------------------------------------------------------------

# Pieces that hit the checkers' edges: case oddities (sigma, sharp s, dotted I, titlecase dz),
# keywords inside longer words, bullets, placeholders, titles, braces and fences.
PIECES = ["Sure", "sure", "Surely", "rain", "Rain", "rains", "brain", "sun", ",", ".", "!", "?",
          " ", "  ", "\n", "\n\n", "* ", "- ", "[name]", "[ ]", "<<T>>", "<< >>", "<<", ">>",
          "{", "}", '"a"', ":", "1", "[", "]", "```", "```json\n", "That is all.", "that",
          "ß", "Σ", "ς", "İ", "ǅ", "é", "É", "x", "X", "Ⓐ", "½", "\u0301", "_"]
TEXTS = st.one_of(st.lists(st.sampled_from(PIECES), max_size=14).map("".join), st.text(max_size=30))

_REF_LETTER = re.compile(r"[^\W\d_]")
_REF_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def _ref_json(text: str) -> bool:
    body = text.strip()
    fence = _REF_FENCE.match(body)
    if fence:
        body = fence.group(1).strip()
    try:
        return isinstance(json.loads(body), dict | list)
    except ValueError:
        return False


def _ref_starts(text: str, phrase: str) -> bool:
    t, p = text.lstrip().casefold(), phrase.casefold()
    return t[:len(p)] == p and not (len(t) > len(p) and t[len(p)].isalnum() and p[-1].isalnum())


def _ref_ends(text: str, phrase: str) -> bool:
    t, p = text.rstrip().casefold(), phrase.casefold()
    cut = len(t) - len(p)
    return (cut >= 0 and t[cut:] == p
            and not (cut > 0 and t[cut - 1].isalnum() and p[0].isalnum()))


def _ref_words(text: str) -> int:
    return len(re.findall(r"\w+(?:['\u2019]\w+)*", text))


def _ref_count(pattern: str, text: str, flags: int = 0) -> int:
    return len(re.findall(pattern, text, flags))


# (type, args, the strict IFEval-style check written out again)
STRICT = [
    ("word_count", {"min": 2, "max": 4}, lambda t: 2 <= _ref_words(t) <= 4),
    ("bullet_count", {"count": 1}, lambda t: _ref_count(r"^[ \t]*[*-][ \t]+\S", t, re.M) == 1),
    ("placeholder_count", {"min": 1}, lambda t: _ref_count(r"\[[^\[\]\n]*\w[^\[\]\n]*\]", t) >= 1),
    ("keyword_frequency", {"keyword": "rain", "min": 2},
     lambda t: _ref_count(r"(?<!\w)rain", t, re.I) >= 2),
    ("keywords_include", {"keywords": ["rain", "sun"]},
     lambda t: all(re.search(rf"(?<!\w){w}", t, re.I) for w in ("rain", "sun"))),
    ("keywords_exclude", {"keywords": ["rain"]}, lambda t: not re.search(r"(?<!\w)rain", t, re.I)),
    ("lowercase", {}, lambda t: bool(_REF_LETTER.search(t)) and t.lower() == t),
    ("uppercase", {}, lambda t: bool(_REF_LETTER.search(t)) and t.upper() == t),
    ("starts_with", {"phrase": "Sure"}, lambda t: _ref_starts(t, "Sure")),
    ("ends_with", {"phrase": "That is all."}, lambda t: _ref_ends(t, "That is all.")),
    ("json_format", {}, _ref_json),
    ("no_commas", {}, lambda t: "," not in t),
    ("title", {}, lambda t: bool(re.search(r"<<[^<>\n]*\w[^<>\n]*>>", t))),
]


@pytest.mark.parametrize("ctype, args, strict", STRICT, ids=[c[0] for c in STRICT])
@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_credit_is_one_exactly_when_strict(ctype, args, strict, text):
    credit = CHECKERS[ctype](text, args)
    assert 0.0 <= credit <= 1.0
    assert (credit == 1.0) == strict(text)


@settings(max_examples=150, deadline=None)
@given(sentences=st.integers(0, 12), paragraphs=st.integers(1, 5), bound=st.integers(0, 6))
def test_count_credit_is_one_exactly_inside_bounds(sentences, paragraphs, bound):
    text = "\n\n".join(["Word."] * paragraphs) + " Yes." * sentences
    got_s = CHECKERS["sentence_count"](text, {"max": bound})
    got_p = CHECKERS["paragraph_count"](text, {"count": bound})
    assert (got_s == 1.0) == (paragraphs + sentences <= bound)
    assert (got_p == 1.0) == (paragraphs == bound)
    assert 0 < got_s <= 1 and 0 < got_p <= 1


# ---- the quality factor ---------------------------------------------------------------------

def test_repetition_and_moving_ttr_hand_computed():
    # bigrams ab ba ab ba: 2 distinct of 4
    assert repeated_ngram_share(list("ababa"), 2) == pytest.approx(0.5)
    assert repeated_ngram_share(list("ab"), 3) == 0.0
    # windows of 2 over a b a a: {a,b} {b,a} {a}: (2 + 2 + 1) / (3 * 2)
    assert moving_type_token_ratio(list("abaa"), 2) == pytest.approx(5 / 6)
    # shorter than a window: the plain ratio, 3 distinct of 4
    assert moving_type_token_ratio(list("abca"), 25) == pytest.approx(3 / 4)
    assert moving_type_token_ratio([], 25) == 0.0


def _one(response: str, finish_reason: str | None = None, **knobs) -> pd.Series:
    cons = json.dumps([{"id": "kw", "type": "keywords_include", "args": {"keywords": ["cat"]}}])
    frame = pd.DataFrame({"prompt_id": ["p"], "response": [response], "constraints": [cons]})
    if finish_reason is not None:
        frame["finish_reason"] = [finish_reason]
    return RulesScorer(**knobs).score(frame).iloc[0]


def test_quality_of_a_loop():
    looped = "the cat sat on the mat " * 10  # 60 words, period 6
    row = _one(looped)
    # 58 trigrams, 6 distinct (the cat sat | cat sat on | sat on the | on the mat | the mat the |
    # mat the cat); every 25-word window holds 5 distinct words (the, cat, sat, on, mat)
    expected_q = (1 - (1 - 6 / 58)) * (1 - 0.1 * (1 - 5 / 25))
    assert row["rules/quality"] == pytest.approx(expected_q)
    assert row["score/rules"] == pytest.approx(expected_q)  # the keyword is met: c = 1
    assert row["rules/strict"] == 1.0 and json.loads(row["rules/detail"]) == {"kw": 1.0}
    clean = _one("the cat sat on a mat near the door")
    assert clean["rules/strict"] == 1.0 and clean["score/rules"] > 5 * row["score/rules"]


def test_quality_of_a_cut_off_response():
    text = "the cat sat on a mat"  # 6 distinct words: no repeat, ratio 1
    assert _one(text, "stop")["score/rules"] == 1.0
    cut = _one(text, "length")
    assert cut["rules/quality"] == pytest.approx(0.75) and cut["score/rules"] == pytest.approx(0.75)
    assert cut["rules/strict"] == 1.0 and cut["rules/passed"] == 1.0
    assert _one(text, "length", truncation_penalty=0.5)["score/rules"] == pytest.approx(0.5)
    # a table without finish_reason counts nothing as cut off
    assert _one(text)["rules/quality"] == 1.0


def test_quality_of_empty_and_wordless_responses():
    for text in ("", "   \n", "!!! ..."):
        row = _one(text)
        assert row["score/rules"] == 0.0 and row["rules/quality"] == 0.0
    assert json.loads(_one("")["rules/detail"]) == {"kw": 0.0}


def test_quality_never_changes_pass_bits():
    texts = ["the cat " * 30, "the cat sat", "no match here", ""]
    frames = [_one(t, "length") for t in texts]
    plain = [_one(t, "length", base_reward=0, loop_penalty=0, diversity_weight=0,
                  truncation_penalty=0) for t in texts]
    for a, b in zip(frames, plain, strict=True):
        assert a["rules/detail"] == b["rules/detail"]
        assert a["rules/passed"] == b["rules/passed"] and a["rules/strict"] == b["rules/strict"]


def test_fluent_failure_ranks_above_degenerate_answers():
    fluent_miss = _one("a dog ran across the wide green park today")["score/rules"]
    looped_miss = _one("a dog ran " * 20)["score/rules"]
    assert fluent_miss == pytest.approx(0.1) and 0 < looped_miss < fluent_miss


# ---- spread among N samples of one prompt ----------------------------------------------------

# Eight answers a small model might give to "Describe rain in at most 30 words. Include the words
# 'rain' and 'cloud'. Do not use any commas.": some meet everything, some run long, some miss a
# word, one loops, one is cut off, one is empty.
SAMPLES = [
    ("Rain falls from grey clouds and taps on the roof while the streets shine.", "stop"),
    ("Rain is water that falls from clouds when drops grow heavy enough to fall down to the "
     "ground below us all.", "stop"),
    ("Rain, which comes from clouds, is water falling from the sky, and it helps plants grow, "
     "fills rivers, and cools the air on hot days in summer.", "stop"),
    ("Rain falls softly. It makes the garden green and the air fresh and the children happy "
     "while they play outside in puddles near the old stone wall by the road.", "length"),
    ("Rain rain rain rain rain rain rain rain rain rain rain rain rain rain rain rain", "length"),
    ("When clouds gather over the hills the rain begins and everything smells of wet earth.",
     "stop"),
    ("Water drops fall from the sky and make everything wet and shiny for a while.", "stop"),
    ("", "stop"),
]


def test_eight_realistic_samples_get_distinct_rewards():
    cons = json.dumps([
        {"id": "len", "type": "word_count", "args": {"max": 30}},
        {"id": "kw", "type": "keywords_include", "args": {"keywords": ["rain", "cloud"]}},
        {"id": "comma", "type": "no_commas", "args": {}},
    ])
    frame = pd.DataFrame({"prompt_id": "p", "sample_id": range(8),
                          "response": [s[0] for s in SAMPLES],
                          "finish_reason": [s[1] for s in SAMPLES], "constraints": cons})
    out = RulesScorer().score(frame)
    rewards = list(out["score/rules"])
    assert len(set(rewards)) >= 0.75 * len(rewards)
    # the old binary-style view of the same samples: strict pass bits take 2 values
    assert set(out["rules/strict"]) == {0.0, 1.0}
    # the loop and the empty answer are the two lowest rewards
    assert sorted(rewards)[:2] == sorted([rewards[4], rewards[7]])
    # the three answers that meet everything without being cut off lead
    assert {rewards.index(r) for r in sorted(rewards)[-3:]} == {0, 1, 5}
    assert statistics.median(rewards) < max(rewards)
