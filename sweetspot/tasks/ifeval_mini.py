"""``ifeval_mini``: short instructions with verifiable constraints, written for sweetspot.

Each prompt is an everyday task plus 1-3 explicit constraints that ``sweetspot.scoring.rules``
checks (word and sentence counts, keywords, bullets, case, JSON, ...). The tasks are simple and
the limits small, so a 135M-parameter instruct model meets some of them some of the time: the N
samples of a prompt then differ in reward, which is what preference selection needs.

The data file is generated deterministically by ``generate()`` and committed;
``python -m sweetspot.tasks.ifeval_mini`` rewrites it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pandas as pd

from sweetspot.errors import DataError

Case = Callable[[str], str]  # how keywords and phrases are cased to agree with a case constraint

DATA_PACKAGE = "sweetspot.tasks.data"
DATA_FILE = "ifeval_mini.jsonl"

# Generation settings; changing any of them changes the committed file.
SEED = 20250
NUM_PROMPTS = 300
HELDOUT_FRACTION = 0.15
# Probability of 1, 2 and 3 constraints per prompt.
NUM_CONSTRAINT_WEIGHTS = (0.35, 0.45, 0.20)

# (task, four words a good answer would naturally use)
TOPICS: list[tuple[str, list[str]]] = [
    ("Explain how a rainbow forms.", ["light", "rain", "sun", "sky"]),
    ("Describe your ideal weekend morning.", ["coffee", "quiet", "breakfast", "walk"]),
    ("Give advice to someone learning to cook.", ["recipe", "kitchen", "taste", "practice"]),
    ("Explain why the sky looks blue.", ["light", "air", "blue", "scatter"]),
    ("Write a short note thanking a teacher.", ["thank", "lesson", "patience", "class"]),
    ("Describe a busy city street at night.", ["lights", "traffic", "people", "noise"]),
    ("Explain what a computer program is.", ["code", "instructions", "computer", "data"]),
    ("Give tips for sleeping better.", ["sleep", "bed", "screen", "routine"]),
    ("Describe the taste of a fresh orange.", ["sweet", "juice", "citrus", "fresh"]),
    ("Explain how plants make their food.", ["sunlight", "leaves", "water", "energy"]),
    ("Write a short product description for a water bottle.",
     ["bottle", "water", "steel", "cold"]),
    ("Give reasons to learn a second language.", ["language", "travel", "culture", "brain"]),
    ("Describe a walk in a forest after rain.", ["trees", "mud", "birds", "smell"]),
    ("Explain what a budget is and why it helps.", ["money", "budget", "spending", "savings"]),
    ("Write a short story about a lost cat.", ["cat", "home", "night", "found"]),
    ("Explain how a bicycle works.", ["pedals", "wheels", "chain", "brakes"]),
    ("Describe the ocean to someone who has never seen it.", ["waves", "salt", "blue", "sand"]),
    ("Give advice for a first job interview.", ["interview", "questions", "prepare", "smile"]),
    ("Explain why exercise is good for health.", ["heart", "muscles", "energy", "health"]),
    ("Write a short invitation to a birthday party.", ["party", "cake", "friends", "date"]),
    ("Explain how the moon changes shape each month.", ["moon", "sun", "light", "orbit"]),
    ("Describe a favorite childhood game.", ["game", "friends", "rules", "play"]),
    ("Give tips for studying for an exam.", ["study", "notes", "exam", "break"]),
    ("Explain what recycling is.", ["recycle", "plastic", "paper", "waste"]),
    ("Describe a thunderstorm.", ["thunder", "lightning", "rain", "clouds"]),
    ("Write a short review of an imaginary cafe.", ["coffee", "staff", "price", "cozy"]),
    ("Explain how bees help flowers.", ["bees", "pollen", "flowers", "honey"]),
    ("Give advice on keeping a houseplant alive.", ["water", "light", "soil", "leaves"]),
    ("Describe a train journey through the mountains.",
     ["train", "mountains", "window", "tunnel"]),
    ("Explain why people need water to live.", ["water", "body", "cells", "thirst"]),
    ("Write a short motivational message for a runner.", ["run", "finish", "strong", "goal"]),
    ("Explain what a volcano is.", ["lava", "magma", "eruption", "mountain"]),
    ("Describe the perfect picnic.", ["basket", "sandwiches", "blanket", "park"]),
    ("Give tips for writing a clear email.", ["subject", "short", "reader", "email"]),
    ("Explain how a library works.", ["books", "borrow", "card", "shelves"]),
    ("Describe winter in a small village.", ["snow", "cold", "fire", "quiet"]),
    ("Explain why the ocean is salty.", ["salt", "rivers", "rocks", "water"]),
    ("Write a short apology to a friend for being late.", ["sorry", "late", "time", "friend"]),
    ("Give advice for saving money on groceries.", ["list", "prices", "groceries", "budget"]),
    ("Explain how a rocket reaches space.", ["rocket", "fuel", "gravity", "engines"]),
    ("Describe the sounds of a farm in the morning.", ["rooster", "cows", "tractor", "morning"]),
    ("Explain what friendship means.", ["trust", "friend", "support", "time"]),
    ("Give tips for a long car trip.", ["snacks", "music", "breaks", "map"]),
    ("Explain how bread is made.", ["flour", "yeast", "dough", "oven"]),
    ("Describe a market on a sunny day.", ["fruit", "stalls", "crowd", "colors"]),
    ("Explain why we have seasons.", ["earth", "tilt", "sun", "summer"]),
    ("Write a short welcome message for new club members.",
     ["welcome", "club", "members", "meeting"]),
    ("Give advice for learning to play the guitar.", ["guitar", "chords", "fingers", "practice"]),
    ("Explain what the internet is.", ["computers", "network", "data", "information"]),
    ("Describe a quiet evening at home.", ["lamp", "book", "tea", "evening"]),
    ("Explain how a fish breathes underwater.", ["gills", "oxygen", "water", "fish"]),
    ("Give tips for making new friends.", ["listen", "smile", "interests", "questions"]),
    ("Explain why sleep matters for the brain.", ["brain", "memory", "sleep", "rest"]),
    ("Write a short poem about autumn leaves.", ["leaves", "wind", "gold", "fall"]),
    ("Explain how a refrigerator keeps food cold.", ["cold", "heat", "food", "air"]),
    ("Describe a visit to a museum.", ["paintings", "history", "rooms", "guide"]),
    ("Give advice for staying calm before a test.", ["breathe", "calm", "test", "sleep"]),
    ("Explain what clouds are made of.", ["water", "droplets", "air", "sky"]),
    ("Write a short letter to your future self.", ["future", "hope", "remember", "year"]),
    ("Explain how a compass works.", ["needle", "north", "magnet", "direction"]),
]

TYPES = ("word_count", "sentence_count", "keywords_include", "keywords_exclude", "bullet_count",
         "lowercase", "uppercase", "ends_with", "starts_with", "json_format", "no_commas", "title",
         "paragraph_count", "keyword_frequency", "placeholder_count")

# Pairs that cannot (or can hardly) hold together in one short answer.
CONFLICTS = {frozenset(p) for p in [
    ("lowercase", "uppercase"),
    ("json_format", "bullet_count"), ("json_format", "paragraph_count"), ("json_format", "title"),
    ("json_format", "starts_with"), ("json_format", "ends_with"),
    ("json_format", "sentence_count"), ("json_format", "no_commas"),
    ("json_format", "uppercase"),
    ("bullet_count", "paragraph_count"), ("bullet_count", "sentence_count"),
    ("sentence_count", "paragraph_count"), ("title", "starts_with"),
]}

START_PHRASES = ["Sure", "Here is", "In short", "Of course", "Well"]
END_PHRASES = ["Is there anything else?", "That is all.", "Thank you for reading.",
               "Stay curious.", "Have a nice day."]
# (min, max) word bounds; None is an open side. Small enough for a 64-128 token answer.
WORD_BOUNDS = [(20, None), (30, None), (40, None), (None, 30), (None, 40), (None, 50),
               (None, 60), (20, 40), (30, 60), (40, 70)]


def _word_count(rng: random.Random, case: Case) -> tuple[dict, str]:
    low, high = rng.choice(WORD_BOUNDS)
    args = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
    if low is not None and high is not None:
        return args, rng.choice([f"Your answer must be between {low} and {high} words long.",
                                 f"Use {low} to {high} words."])
    if low is not None:
        return args, rng.choice([f"Write at least {low} words.",
                                 f"Your answer must contain at least {low} words."])
    return args, rng.choice([f"Use at most {high} words.",
                             f"Keep your answer to {high} words or fewer."])


def _sentence_count(rng: random.Random, case: Case) -> tuple[dict, str]:
    n = rng.choice([2, 3, 4])
    if rng.random() < 0.5:
        return {"count": n}, f"Answer in exactly {n} sentences."
    return {"max": n}, f"Use no more than {n} sentences."


def _bullet_count(rng: random.Random, case: Case) -> tuple[dict, str]:
    n = rng.choice([2, 3, 4, 5])
    return {"count": n}, rng.choice([
        f"Give exactly {n} bullet points, each on its own line starting with \"* \".",
        f"Format your answer as exactly {n} bullet points using markdown, like:\n* point one"])


def _paragraph_count(rng: random.Random, case: Case) -> tuple[dict, str]:
    n = rng.choice([2, 3])
    return {"count": n}, (f"Write exactly {n} paragraphs, separated from each other by one "
                          "blank line.")


def _placeholder_count(rng: random.Random, case: Case) -> tuple[dict, str]:
    n = rng.choice([1, 2, 3])
    return {"min": n}, (f"Include at least {n} placeholder{'s' * (n > 1)} in square brackets, "
                        "such as [name].")


def _starts_with(rng: random.Random, case: Case) -> tuple[dict, str]:
    phrase = case(rng.choice(START_PHRASES))
    return {"phrase": phrase}, f"Start your answer with the words \"{phrase}\"."


def _ends_with(rng: random.Random, case: Case) -> tuple[dict, str]:
    phrase = case(rng.choice(END_PHRASES))
    return {"phrase": phrase}, rng.choice([
        f"End your answer with the exact phrase \"{phrase}\" and nothing after it.",
        f"Finish your response with \"{phrase}\"."])


def _fixed(text_options: list[str]) -> Callable[[random.Random, Case], tuple[dict, str]]:
    def make(rng: random.Random, case: Case) -> tuple[dict, str]:
        return {}, rng.choice(text_options)
    return make


TEMPLATES = {
    "word_count": _word_count,
    "sentence_count": _sentence_count,
    "bullet_count": _bullet_count,
    "paragraph_count": _paragraph_count,
    "placeholder_count": _placeholder_count,
    "starts_with": _starts_with,
    "ends_with": _ends_with,
    "lowercase": _fixed(["Your entire answer must be in lowercase letters, with no capital "
                         "letters at all.", "Write everything in lowercase only."]),
    "uppercase": _fixed(["Your entire answer must be in capital letters (all uppercase).",
                         "Write everything in uppercase letters only."]),
    "json_format": _fixed(["Wrap your entire answer in JSON format, as one JSON object.",
                           "Reply only with valid JSON: a single JSON object and no other "
                           "text."]),
    "no_commas": _fixed(["Do not use any commas in your answer.",
                         "Your reply must not contain a single comma."]),
    "title": _fixed(["Give your answer a title wrapped in double angle brackets, such as "
                     "<<my title>>.", "Begin with a title in double angle brackets, like "
                     "<<title>>."]),
}


def _keyword_constraints(types: list[str], words: list[str], rng: random.Random,
                         case: Case) -> dict[str, tuple[dict, str]]:
    """The three keyword types share the topic's four words and never pick the same one."""
    pool = rng.sample(words, len(words))
    made = {}
    if "keywords_include" in types:
        chosen = [case(w) for w in pool[:rng.choice([1, 2])]]
        pool = pool[len(chosen):]
        quoted = " and ".join(f"\"{w}\"" for w in chosen)
        made["keywords_include"] = ({"keywords": chosen},
                                    f"Include the word{'s' * (len(chosen) > 1)} {quoted}.")
    if "keyword_frequency" in types:
        word, k = case(pool.pop(0)), rng.choice([2, 3])
        made["keyword_frequency"] = ({"keyword": word, "min": k},
                                     f"Use the word \"{word}\" at least {k} times.")
    if "keywords_exclude" in types:
        word = case(pool.pop(0))
        made["keywords_exclude"] = ({"keywords": [word]},
                                    rng.choice([f"Do not use the word \"{word}\".",
                                                f"Avoid the word \"{word}\" entirely."]))
    return made


def _pick_types(index: int, rng: random.Random) -> list[str]:
    """A primary type that cycles through all types (every type is well represented, and each
    topic meets several), plus compatible extras drawn at random."""
    primary = TYPES[(index + index // len(TOPICS)) % len(TYPES)]
    types = [primary]
    wanted = rng.choices([1, 2, 3], weights=NUM_CONSTRAINT_WEIGHTS)[0]
    for candidate in rng.sample(TYPES, len(TYPES)):
        if len(types) == wanted:
            break
        if candidate not in types and all(frozenset((candidate, t)) not in CONFLICTS
                                          for t in types):
            types.append(candidate)
    return types


def generate(seed: int = SEED, num_prompts: int = NUM_PROMPTS,
             heldout_fraction: float = HELDOUT_FRACTION) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(num_prompts):
        task, words = TOPICS[i % len(TOPICS)]
        types = _pick_types(i, rng)
        # Keywords and phrases follow a case constraint, so they can be met case-sensitively.
        case = str.upper if "uppercase" in types else str.lower if "lowercase" in types else str
        made = _keyword_constraints(types, words, rng, case)
        for t in types:
            if t not in made:
                made[t] = TEMPLATES[t](rng, case)
        constraints = [{"id": t, "type": t, "args": made[t][0]} for t in types]
        text = " ".join([task] + [made[t][1] for t in types])
        rows.append({"prompt_id": f"ifeval-{i + 1:04d}", "prompt": text,
                     "constraints": constraints, "split": "train"})
    for row in rng.sample(rows, round(heldout_fraction * num_prompts)):
        row["split"] = "heldout"
    return rows


def write(path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in generate():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def data_path():
    """The committed file, found through the package so it also works from an installed wheel."""
    return resources.files(DATA_PACKAGE).joinpath(DATA_FILE)


def load_ifeval_mini(split: str | None = None) -> pd.DataFrame:
    """Prompts as a table: ``prompt_id``, ``prompt`` (one user message), ``split`` and
    ``constraints`` (JSON string, the form ``RulesScorer`` reads). ``split`` keeps one split."""
    source = data_path()
    rows = []
    for line_no, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"invalid JSON ({err})", str(source), line_no) from err
        for key in ("prompt_id", "prompt", "constraints", "split"):
            if key not in row:
                raise DataError("missing field", str(source), line_no, key)
        rows.append({"prompt_id": row["prompt_id"],
                     "prompt": [{"role": "user", "content": row["prompt"]}],
                     "split": row["split"],
                     "constraints": json.dumps(row["constraints"])})
    frame = pd.DataFrame(rows, columns=["prompt_id", "prompt", "split", "constraints"])
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return frame


if __name__ == "__main__":
    target = Path(__file__).parent / "data" / DATA_FILE
    write(target)
    print(f"wrote {target}")
