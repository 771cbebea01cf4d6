"""Verifiable instruction constraints (IFEval-style) and their graded checkers.

A constraint is ``{"id": str, "type": str, "args": dict}``. Each checker maps a response and the
constraint's args to a credit in [0, 1]. The credit is exactly 1.0 when, and only when, the
strict IFEval-style check passes, so strict accuracy is read off the credits (``credit == 1.0``);
every failing response gets a graded credit strictly below 1 that says how far off it is. Among
N samples of a small model, "nearly right" then ranks above "far off", and few samples tie: the
selection stage needs reward spread, not only a pass bit. (A failing credit is also capped at the
largest float below 1, a guard that ordinary inputs never reach.)

Each checker's formula (``pass`` is the strict check; ``k`` a count in the response):

==================  ==========================================  ==================================
type                strict pass                                 credit when it fails
==================  ==========================================  ==================================
word_count,         the count lies in [min, max] (``count``     ``exp(-d / width)``, ``d = |k - b|
sentence_count,     means min = max = count)                    / max(b, 1)``, ``b`` the violated
paragraph_count,                                                bound (``bounded_credit``)
bullet_count,
placeholder_count,
keyword_frequency
keywords_include    every keyword occurs                        share of the keywords that occur
keywords_exclude    no keyword occurs                           ``1 / (1 + k)``, ``k`` occurrences
                                                                of all the keywords together
lowercase           a letter, and ``text == text.lower()``      ``kept / (kept + changed)``:
                                                                ``changed`` characters that
                                                                ``lower()`` alters, ``kept``
                                                                letters it leaves; 0 with no
                                                                letter
uppercase           a letter, and ``text == text.upper()``      the same with ``upper()``
starts_with         the text opens with the phrase as whole     ``0.9 * sim(phrase, opening)``:
                    words (case-insensitive by default)         ``opening`` = the first
                                                                ``len(phrase)`` characters,
                                                                ``sim`` = difflib's ratio
                                                                ``2 M / (|a| + |b|)``, M matched
                                                                characters
ends_with           the text closes with the phrase as whole    ``0.9 * sim(phrase, closing)``,
                    words                                       the last ``len(phrase)`` chars
json_format         the whole text (a Markdown code fence       ``0.5 + 0.4 * s`` when the span
                    around it allowed) is one JSON object or    from the first ``{`` to the last
                    array                                       ``}`` is a valid object inside
                                                                other text, ``0.2 * s`` when that
                                                                span does not parse, 0 with no
                                                                ``{``; ``s`` = span length / text
                                                                length
no_commas           no ``,``                                    ``1 / (1 + k)``, ``k`` commas
title               a ``<<title>>`` with a word, anywhere       0.5 for an attempt with angle
                                                                brackets (``<<``/``>>`` present,
                                                                or a first line ``<...>``); 0.25
                                                                for a first line that is a
                                                                Markdown heading (``#``) or bold
                                                                (``**...**``); else 0
==================  ==========================================  ==================================

``width`` is ``RulesScorer.partial_credit_width`` (default 1.0): a count that misses its bound by
``width`` times the bound keeps ``1/e`` (0.37) of the credit. The exponential never reaches 0,
so two responses that miss by different amounts never tie. Examples with width 1: 45 words for
"at most 30" gives ``exp(-0.5) = 0.61``; 0 bullets for "exactly 3" gives ``exp(-1) = 0.37``.

Counting rules (documented here because the prompts are judged by them):

- word: a run of letters/digits, apostrophes inside it included (``don't`` is one word).
- sentence: a run of text that ends with ``.``, ``!`` or ``?`` followed by whitespace, or with the
  end of the text; only runs that contain a letter or digit count.
- paragraph: a block separated from the next by a blank line.
- bullet: a line that starts (after indentation) with ``* `` or ``- ``.
- keyword: matched at the start of a word, case-insensitively unless asked otherwise, so plurals
  and inflections count (``cloud`` matches ``clouds``).
- placeholder: text in square brackets on one line, like ``[name]``.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Callable

from sweetspot.errors import DataError

# Default width of the partial-credit fall-off (see ``bounded_credit``); RulesScorer overrides it.
DEFAULT_PARTIAL_CREDIT_WIDTH = 1.0
# A failed phrase (starts_with / ends_with) earns at most this share of its similarity.
PHRASE_FAIL_SCALE = 0.9
# The largest float below 1: the ceiling of every failing credit.
BELOW_ONE = math.nextafter(1.0, 0.0)

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_BULLET = re.compile(r"^[ \t]*[*-][ \t]+\S", re.MULTILINE)
_TITLE = re.compile(r"<<[^<>\n]*\w[^<>\n]*>>")
_PLACEHOLDER = re.compile(r"\[[^\[\]\n]*\w[^\[\]\n]*\]")
_LETTER = re.compile(r"[^\W\d_]")
_ALNUM = re.compile(r"[^\W_]")
_CODE_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def _fail(credit: float) -> float:
    """A failing credit: strictly below 1 whatever rounding did, so ``== 1.0`` means passed."""
    return min(credit, BELOW_ONE)


def bounded_credit(value: float, low: float | None, high: float | None, width: float) -> float:
    """Credit for a count that should lie in [low, high] (either bound may be None).

    Inside the bounds the credit is 1. Outside, with ``b`` the violated bound, the relative
    distance is ``d = |value - b| / max(b, 1)`` and the credit is ``exp(-d / width)``: smooth,
    1/e at a miss of ``width`` times the bound, and never 0, so misses of different sizes never
    tie. Example: 30 words for bounds 50..100 with width 0.5 gives d = 0.4 and credit
    exp(-0.8) = 0.449. ``max(b, 1)`` keeps a bound of 0 ("no bullets") meaningful.
    """
    if low is not None and value < low:
        bound = low
    elif high is not None and value > high:
        bound = high
    else:
        return 1.0
    distance = abs(value - bound) / max(bound, 1)
    return _fail(math.exp(-distance / width))


def _arg(args: dict, key: str):
    if key not in args:
        raise DataError(f"constraint args lack '{key}'", field=f"args.{key}")
    return args[key]


def _bounds(args: dict) -> tuple[float | None, float | None]:
    """``count`` (exact) or ``min`` and/or ``max``."""
    if "count" in args:
        low = high = args["count"]
    else:
        low, high = args.get("min"), args.get("max")
    if low is None and high is None:
        raise DataError("a count constraint needs 'count', 'min' or 'max'", field="args")
    for key, value in (("min", low), ("max", high)):
        ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                               and math.isfinite(value) and value >= 0)
        if not ok:
            raise DataError(f"bound must be a number >= 0, got {value!r}", field=f"args.{key}")
    if low is not None and high is not None and low > high:
        raise DataError(f"min {low} > max {high}", field="args")
    return low, high


@functools.lru_cache(maxsize=4096)
def _keyword_pattern(keyword: str, case_sensitive: bool) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(keyword), 0 if case_sensitive else re.IGNORECASE)


def _keywords(args: dict) -> list[str]:
    words = _arg(args, "keywords")
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
        raise DataError("keywords must be a non-empty list of strings", field="args.keywords")
    return words


def _phrase(args: dict) -> str:
    phrase = _arg(args, "phrase")
    if not isinstance(phrase, str) or not phrase.strip():
        raise DataError("phrase must be a non-empty string", field="args.phrase")
    return phrase.strip()


def words(text: str) -> list[str]:
    """The words of ``text`` by the counting rule above, in order."""
    return _WORD.findall(text)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    return sum(1 for part in _SENTENCE_END.split(text) if _ALNUM.search(part))


def count_paragraphs(text: str) -> int:
    return sum(1 for part in _PARAGRAPH_BREAK.split(text) if _ALNUM.search(part))


# Every checker: (response, args, *, width, case_sensitive) -> float in [0, 1]. The keyword
# options have defaults, so each is also a plain Callable[[str, dict], float].

def check_word_count(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                     case_sensitive: bool = False) -> float:
    return bounded_credit(count_words(response), *_bounds(args), width)


def check_sentence_count(response: str, args: dict, *,
                         width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                         case_sensitive: bool = False) -> float:
    return bounded_credit(count_sentences(response), *_bounds(args), width)


def check_paragraph_count(response: str, args: dict, *,
                          width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                          case_sensitive: bool = False) -> float:
    return bounded_credit(count_paragraphs(response), *_bounds(args), width)


def check_bullet_count(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                       case_sensitive: bool = False) -> float:
    return bounded_credit(len(_BULLET.findall(response)), *_bounds(args), width)


def check_placeholder_count(response: str, args: dict, *,
                            width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                            case_sensitive: bool = False) -> float:
    return bounded_credit(len(_PLACEHOLDER.findall(response)), *_bounds(args), width)


def check_keyword_frequency(response: str, args: dict, *,
                            width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                            case_sensitive: bool = False) -> float:
    keyword = _arg(args, "keyword")
    if not isinstance(keyword, str) or not keyword:
        raise DataError("keyword must be a non-empty string", field="args.keyword")
    found = len(_keyword_pattern(keyword, case_sensitive).findall(response))
    return bounded_credit(found, *_bounds(args), width)


def check_keywords_include(response: str, args: dict, *,
                           width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                           case_sensitive: bool = False) -> float:
    """Share of the required keywords present (each keyword is one unit)."""
    words = _keywords(args)
    found = sum(1 for w in words if _keyword_pattern(w, case_sensitive).search(response))
    return found / len(words)


def check_keywords_exclude(response: str, args: dict, *,
                           width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                           case_sensitive: bool = False) -> float:
    """``1 / (1 + k)`` with ``k`` the occurrences of all forbidden keywords: one slip costs
    half, each further one less."""
    words = _keywords(args)
    found = sum(len(_keyword_pattern(w, case_sensitive).findall(response)) for w in words)
    return 1.0 / (1 + found)


def _case_share(response: str, to_case: Callable[[str], str]) -> float:
    """Letters already in the target case / (those + characters the case mapping alters).

    1 exactly when some letter exists and ``to_case(response) == response``: Python's case
    mappings act per character (the one context rule, Greek final sigma, only touches a capital
    sigma, which is altered anyway), so the text is unchanged iff every character is."""
    if to_case(response) == response:
        return 1.0 if _LETTER.search(response) else 0.0
    changed = sum(1 for ch in response if to_case(ch) != ch)
    kept = sum(1 for ch in _LETTER.findall(response) if to_case(ch) == ch)
    return _fail(kept / (kept + changed))


def check_lowercase(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                    case_sensitive: bool = False) -> float:
    return _case_share(response, str.lower)


def check_uppercase(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                    case_sensitive: bool = False) -> float:
    return _case_share(response, str.upper)


def _fold(text: str, case_sensitive: bool) -> str:
    return text if case_sensitive else text.casefold()


def _similarity(a: str, b: str) -> float:
    """difflib's ratio ``2 M / (|a| + |b|)``, M the characters in matching blocks."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def check_starts_with(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                      case_sensitive: bool = False) -> float:
    """The phrase opens the response as whole words ("Sure" does not match "Surely"). Failing:
    ``0.9 *`` the similarity of the phrase and the response's first ``len(phrase)`` characters."""
    phrase = _fold(_phrase(args), case_sensitive)
    text = _fold(response.lstrip(), case_sensitive)
    rest = text[len(phrase):len(phrase) + 1]
    if text.startswith(phrase) and not (rest.isalnum() and phrase[-1].isalnum()):
        return 1.0
    return _fail(PHRASE_FAIL_SCALE * _similarity(phrase, text[:len(phrase)]))


def check_ends_with(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                    case_sensitive: bool = False) -> float:
    """The phrase closes the response as whole words. Failing: ``0.9 *`` the similarity of the
    phrase and the response's last ``len(phrase)`` characters."""
    phrase = _fold(_phrase(args), case_sensitive)
    text = _fold(response.rstrip(), case_sensitive)
    before = text[len(text) - len(phrase) - 1:len(text) - len(phrase)]
    if text.endswith(phrase) and not (before.isalnum() and phrase[0].isalnum()):
        return 1.0
    return _fail(PHRASE_FAIL_SCALE * _similarity(phrase, text[-len(phrase):]))


def _is_json_container(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict | list)


def check_json_format(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                      case_sensitive: bool = False) -> float:
    """The whole response is one JSON object or array; a Markdown code fence around it is allowed
    (models add one out of habit, and the content is still machine-readable). Failing: an object
    from the first ``{`` to the last ``}`` inside other text earns ``0.5 + 0.4 s``, a span there
    that does not parse ``0.2 s``, with ``s`` the span's share of the stripped text."""
    text = response.strip()
    fenced = _CODE_FENCE.match(text)
    if _is_json_container(fenced.group(1).strip() if fenced else text):
        return 1.0
    start = text.find("{")
    if start < 0:
        return 0.0
    end = text.rfind("}")
    if end < start:
        return _fail(0.2 * (len(text) - start) / len(text))
    share = (end + 1 - start) / len(text)
    try:
        embedded = isinstance(json.loads(text[start:end + 1]), dict)
    except ValueError:
        embedded = False
    return _fail(0.5 + 0.4 * share if embedded else 0.2 * share)


def check_no_commas(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                    case_sensitive: bool = False) -> float:
    """``1 / (1 + k)`` with ``k`` commas."""
    return 1.0 / (1 + response.count(","))


def check_title(response: str, args: dict, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
                case_sensitive: bool = False) -> float:
    """A ``<<title>>`` anywhere (as IFEval). Failing: 0.5 for an attempt with angle brackets,
    0.25 for a first line styled as a Markdown heading or bold line, else 0."""
    if _TITLE.search(response):
        return 1.0
    first = next((line.strip() for line in response.splitlines() if line.strip()), "")
    if "<<" in response or ">>" in response or (first.startswith("<") and first.endswith(">")):
        return 0.5
    if first.startswith("#") or (len(first) > 4 and first.startswith("**")
                                 and first.endswith("**")):
        return 0.25
    return 0.0


Checker = Callable[..., float]

CHECKERS: dict[str, Checker] = {
    "word_count": check_word_count,
    "sentence_count": check_sentence_count,
    "paragraph_count": check_paragraph_count,
    "bullet_count": check_bullet_count,
    "placeholder_count": check_placeholder_count,
    "keyword_frequency": check_keyword_frequency,
    "keywords_include": check_keywords_include,
    "keywords_exclude": check_keywords_exclude,
    "lowercase": check_lowercase,
    "uppercase": check_uppercase,
    "starts_with": check_starts_with,
    "ends_with": check_ends_with,
    "json_format": check_json_format,
    "no_commas": check_no_commas,
    "title": check_title,
}


def parse_constraints(text: str, where: str = "") -> list[dict]:
    """Parse and check a row's ``constraints`` JSON: a non-empty list of ``{id, type, args}``
    with unique ids and known types; each checker is dry-run on an empty response so that bad
    args fail here, once per prompt, not in the middle of scoring. ``where`` names the row."""
    prefix = f"{where}: " if where else ""
    try:
        items = json.loads(text)
    except (TypeError, ValueError) as err:
        raise DataError(f"{prefix}constraints is not valid JSON ({err})",
                        field="constraints") from err
    if not isinstance(items, list) or not items:
        raise DataError(f"{prefix}constraints must be a non-empty JSON list",
                        field="constraints")
    seen = set()
    for i, item in enumerate(items):
        field = f"constraints[{i}]"
        if not isinstance(item, dict) or not {"id", "type", "args"} <= item.keys():
            raise DataError(f"{prefix}each constraint needs 'id', 'type' and 'args'", field=field)
        if item["type"] not in CHECKERS:
            raise DataError(f"{prefix}unknown constraint type {item['type']!r}; known: "
                            f"{sorted(CHECKERS)}", field=f"{field}.type")
        if not isinstance(item["args"], dict):
            raise DataError(f"{prefix}args must be a JSON object", field=f"{field}.args")
        if item["id"] in seen:
            raise DataError(f"{prefix}duplicate constraint id {item['id']!r}", field=f"{field}.id")
        seen.add(item["id"])
        try:
            CHECKERS[item["type"]]("", item["args"])
        except DataError as err:
            reason = str(err).removesuffix(f" (field '{err.field}')")
            raise DataError(f"{prefix}{item['type']}: {reason}",
                            field=f"{field}.{err.field}") from err
    return items


def check(constraint: dict, response: str, *, width: float = DEFAULT_PARTIAL_CREDIT_WIDTH,
          case_sensitive: bool = False) -> float:
    """Score one constraint; an unknown type is a DataError naming the ``type`` field."""
    checker = CHECKERS.get(constraint.get("type"))
    if checker is None:
        raise DataError(f"unknown constraint type {constraint.get('type')!r}; known: "
                        f"{sorted(CHECKERS)}", field="type")
    return checker(response, constraint.get("args", {}), width=width,
                   case_sensitive=case_sensitive)
