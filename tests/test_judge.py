"""``scorer=judge``: the probability-weighted rating of an LLM judge, from its log-probabilities.

Checked against independent computations: a hand-built distribution (the 1-versus-10 split), an
unbatched full-vocabulary forward of a local tiny model, and the raw ``top_logprobs`` of a real
llama.cpp server (SmolLM2-135M) fetched by the test itself. SmolLM2 (and a random tiny model) are
weak judges: these tests prove the mechanics, not the judgement.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from sweetspot.config import build_node
from sweetspot.errors import ConfigError, SweetspotError
from sweetspot.models import TinyModelShape, build_tiny_model
from sweetspot.scoring.judge import JudgeScorer, rating_distribution
from sweetspot.stage_keys import key_node
from tests.llama_server import NEEDS_LLAMA_CPP

FRAME = pd.DataFrame({
    "prompt_id": ["a", "a", "b"],
    "sample_id": [0, 1, 0],
    "prompt": [[{"role": "user", "content": "Name a fruit."}]] * 2
    + [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]],
    "response": ["Apple.", "", "4"],
}, index=[7, 8, 9])


def test_rating_distribution_splits_ten_from_one() -> None:
    lp = math.log
    first = {"1": lp(0.2), " 7": lp(0.3), "7": lp(0.1), "x": lp(0.4)}  # " 7" and "7" add up
    after_one = {"0": lp(0.5), "2": lp(0.25), ".": lp(0.25)}  # "12" is no rating: drops out
    probs, mass, unresolved = rating_distribution(first, after_one, 1, 10)
    # by hand: P(1) = 0.2 * (1 - 0.5 - 0.25) = 0.05, P(10) = 0.2 * 0.5 = 0.1, P(7) = 0.4
    assert mass == pytest.approx(0.55) and not unresolved
    expect = np.zeros(10)
    expect[[0, 6, 9]] = [0.05 / 0.55, 0.4 / 0.55, 0.1 / 0.55]
    np.testing.assert_allclose(probs, expect)
    # the continuation unknown: P(1 first) stays with 1, and that is reported
    probs, mass, unresolved = rating_distribution(first, None, 1, 10)
    assert unresolved and mass == pytest.approx(0.6) and probs[0] == pytest.approx(0.2 / 0.6)
    # a single-token "10" needs no split
    _, _, unresolved = rating_distribution({"1": lp(0.2), "10": lp(0.3)}, None, 1, 10)
    assert not unresolved
    # no valid token: mass 0, unreadable
    probs, mass, _ = rating_distribution({"x": lp(0.9)}, None, 1, 10)
    assert mass == 0 and not probs.any()


def test_config_and_bad_templates(make_cfg) -> None:
    node = make_cfg("scorer=judge", "scorer.name_or_path=/tmp/judge").scorer
    scorer = build_node(node, "scorer")
    assert scorer.aspects == ["overall"] and "truthfulness" in scorer.templates
    four = build_node(make_cfg("scorer=judge_ultrafeedback",
                               "scorer.name_or_path=/tmp/judge").scorer, "scorer")
    assert four.aspects == ["helpfulness", "honesty", "instruction_following", "truthfulness"]
    node.aspects = ["nope"]
    with pytest.raises(ConfigError, match="aspects"):
        build_node(node, "scorer")
    node.aspects = ["overall"]
    node.templates.overall = "Rate {response} {oops}"
    with pytest.raises(ConfigError, match="templates.overall"):
        build_node(node, "scorer")
    node = make_cfg("scorer=judge", "scorer.backend=openai").scorer
    with pytest.raises(ConfigError, match="base_url"):
        build_node(node, "scorer")
    # how the server is called (retries, waits, threads) is not part of the score's cache key
    server = ("scorer=judge", "scorer.backend=openai", "scorer.base_url=http://h:1/v1",
              "scorer.model=m")
    key = key_node(make_cfg(*server).scorer)
    assert key == key_node(make_cfg(*server, "scorer.backoff_s=0", "scorer.max_backoff_s=2",
                                    "scorer.max_retries=0", "scorer.timeout_s=5").scorer)
    assert key != key_node(make_cfg(*server, "scorer.top_logprobs=5").scorer)
    # the client's settings are checked as the openai sampler's are, at validation
    for bad, field in (("timeout_s=0", "timeout_s"), ("backoff_s=-1", "backoff_s"),
                       ("max_backoff_s=-1", "max_backoff_s"), ("concurrency=0", "concurrency")):
        with pytest.raises(ConfigError, match=field):
            build_node(make_cfg(*server, f"scorer.{bad}").scorer, "scorer")


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("judge")
    build_tiny_model(TinyModelShape(), path)  # byte-level tokenizer: "10" is "1" + "0"
    return path


def by_hand(path: Path, scorer: JudgeScorer, frame: pd.DataFrame) -> list[tuple[float, float]]:
    """Independent: one row at a time, the full-vocabulary softmax, the split done explicitly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    digit = {d: tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    out = []
    for prompt, response in zip(frame["prompt"], frame["response"], strict=True):
        user = " ".join(m["content"] for m in prompt if m["role"] == "user")
        chat = scorer.messages(user, response, "overall")
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            p = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
            q = torch.softmax(model(torch.tensor([ids + [digit[1]]])).logits[0, -1], -1)
        weights = {r: float(p[digit[r]]) for r in range(2, 10)}
        weights[10] = float(p[digit[1]] * q[digit[0]])
        weights[1] = float(p[digit[1]] * (1 - sum(q[digit[d]] for d in range(10))))
        total = sum(weights.values())
        mean = sum(r * w for r, w in weights.items()) / total
        entropy = -sum(w / total * math.log(w / total) for w in weights.values() if w > 0)
        out.append((mean, entropy))
    return out


def test_local_judge_matches_an_unbatched_full_vocabulary_forward(judge_dir: Path) -> None:
    scorer = JudgeScorer(name_or_path=str(judge_dir), device="cpu", batch_size=2)
    got = scorer.score(FRAME)
    assert list(got.index) == list(FRAME.index)
    want = by_hand(judge_dir, scorer, FRAME)
    np.testing.assert_allclose(got["judge/overall/mean"], [m for m, _ in want], rtol=1e-5)
    np.testing.assert_allclose(got["judge/overall/entropy"], [e for _, e in want], rtol=1e-5)
    np.testing.assert_array_equal(got["score/judge"], got["judge/overall/mean"])
    assert got["judge/overall/rating"].between(1, 10).all()
    assert got["judge/prompt_hash"].nunique() == 3  # one rendered prompt per response
    stats = scorer.last_stats
    assert stats["unreadable"] == 0 and stats["ten_unresolved"] == 0
    assert stats["empty_responses"] == 1 and stats["responses"] == 3


def test_unreadable_ratings_are_kept_as_nan_and_counted(judge_dir: Path) -> None:
    scorer = JudgeScorer(name_or_path=str(judge_dir), device="cpu", min_mass=0.999)
    result = scorer.run(FRAME)
    assert len(result.scores) == 3 and result.scores["score/judge"].isna().all()
    assert result.stats["unreadable"] == 3
    assert (result.scores["judge/overall/mass"] > 0).all()  # read, but below min_mass


def test_server_judge_waits_out_a_429_then_scores(flaky_server, caplog) -> None:
    """The judge's server backend shares the ``openai`` sampler's client: a 429 is retried
    after the server's Retry-After (backoff 0: the wait is the server's alone), never longer
    than ``max_backoff_s``, then the answer's logprobs are scored."""
    lp = math.log
    flaky_server.failures, flaky_server.retry_after = 1, "0.3"
    flaky_server.logprobs = [  # the rating position, then the token after it (unused: not "1")
        {"token": "7", "logprob": lp(0.5), "top_logprobs": [
            {"token": "7", "logprob": lp(0.5)}, {"token": "8", "logprob": lp(0.3)},
            {"token": " 3", "logprob": lp(0.1)}, {"token": "Seven", "logprob": lp(0.1)}]},
        {"token": ".", "logprob": lp(0.9), "top_logprobs": []}]
    scorer = JudgeScorer(backend="openai", base_url=flaky_server.url, model="m", backoff_s=0.0,
                         concurrency=1)
    caplog.set_level(logging.WARNING, logger="sweetspot.sampling.openai_client")
    got = scorer.run(FRAME.iloc[[0]]).scores
    waits = [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records]  # what tenacity slept
    assert waits == ["0.3s"] and flaky_server.count == 2
    # by hand: ratings 7, 8, 3 with mass 0.5, 0.3, 0.1 of a visible 0.9
    assert got["score/judge"].iloc[0] == pytest.approx((7 * 0.5 + 8 * 0.3 + 3 * 0.1) / 0.9)
    assert got["judge/overall/mass"].iloc[0] == pytest.approx(0.9)
    assert got["judge/overall/entropy"].iloc[0] == pytest.approx(
        -sum(p / 0.9 * math.log(p / 0.9) for p in (0.5, 0.3, 0.1)))
    assert flaky_server.bodies[-1]["top_logprobs"] == 20
    # a Retry-After of a minute is cut at max_backoff_s
    flaky_server.count, flaky_server.retry_after = 0, "60"
    scorer.max_backoff_s = 0.1
    caplog.clear()
    again = scorer.run(FRAME.iloc[[0]]).scores
    waits = [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records]
    assert waits == ["0.1s"] and flaky_server.count == 2
    assert again["score/judge"].iloc[0] == got["score/judge"].iloc[0]


def test_server_judge_does_not_retry_a_404_and_names_the_url(flaky_server) -> None:
    flaky_server.failures = 0
    scorer = JudgeScorer(backend="openai", base_url=flaky_server.url, model="missing",
                         max_retries=3, backoff_s=0.0)
    url = f"{flaky_server.url}/chat/completions"
    with pytest.raises(SweetspotError, match="HTTP 404: model 'missing' not found") as info:
        scorer.score(FRAME.iloc[[0]])
    assert f"the judge server at {url} answered" in str(info.value) and flaky_server.count == 1
    # a server that keeps answering 429: max_retries + 1 attempts, then an error naming it
    flaky_server.failures, flaky_server.count = 10**6, 0
    scorer.model, scorer.max_retries = "m", 1
    with pytest.raises(SweetspotError, match="did not answer after 2 attempts") as info:
        scorer.score(FRAME.iloc[[0]])
    assert f"the judge server at {url}" in str(info.value) and "429" in str(info.value)
    assert flaky_server.count == 2


@pytest.mark.server
@NEEDS_LLAMA_CPP
def test_server_judge_equals_the_weighted_mean_of_its_raw_logprobs(llama_server: str) -> None:
    scorer = JudgeScorer(backend="openai", base_url=llama_server, model="smollm2",
                         aspects=["overall", "honesty"], concurrency=2, top_logprobs=10,
                         templates={  # short rubrics: the server reads them in a second
                             "overall": "Rate {low}-{high}.\nQ: {instruction}\nA: {response}",
                             "honesty": "Honesty {low}-{high}?\nQ: {instruction}\nA: {response}"})
    frame = FRAME.iloc[[0, 2]]
    got = scorer.score(frame)
    for aspect in ("overall", "honesty"):
        for row, (prompt, response) in enumerate(zip(frame["prompt"], frame["response"],
                                                     strict=True)):
            user = " ".join(m["content"] for m in prompt if m["role"] == "user")
            body = scorer.request_body(scorer.messages(user, response, aspect))
            answer = httpx.post(f"{llama_server}/chat/completions", json=body, timeout=60).json()
            content = answer["choices"][0]["logprobs"]["content"]
            weights = {r: 0.0 for r in range(1, 11)}
            for alt in content[0]["top_logprobs"]:
                text = alt["token"].strip()
                if text.isdigit() and 1 <= int(text) <= 10:
                    weights[int(text)] += math.exp(alt["logprob"])
            if content[0]["token"].strip() == "1" and len(content) > 1:
                nxt = {a["token"].strip(): math.exp(a["logprob"])
                       for a in content[1]["top_logprobs"]}
                p1 = weights[1]
                weights[10] += p1 * nxt.get("0", 0.0)
                weights[1] = p1 * (1 - sum(v for k, v in nxt.items() if k.isdigit()))
            total = sum(weights.values())
            mean = sum(r * w for r, w in weights.items()) / total if total else math.nan
            assert got[f"judge/{aspect}/mean"].iloc[row] == pytest.approx(mean, rel=1e-3)
    both = got[["judge/overall/mean", "judge/honesty/mean"]].mean(axis=1)
    np.testing.assert_allclose(got["score/judge"], both)
    assert scorer.last_stats["judgements"] == 4
