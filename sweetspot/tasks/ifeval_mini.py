"""``ifeval_mini``: short instructions with verifiable constraints, written for sweetspot.

Each prompt is an everyday task plus 1-3 explicit constraints that ``sweetspot.scoring.rules``
checks (word and sentence counts, keywords, bullets, case, JSON, ...). The tasks are simple and
the limits small, so a 135M-parameter instruct model meets some of them some of the time: the N
samples of a prompt then differ in reward, which is what preference selection needs.

Size and split: 800 prompts (``ifeval-0001`` ... ``ifeval-0800``) over 172 everyday topics
(science, daily life, work, travel, food, nature, history, tech, health, hobbies), each with 1-3
constraints of 15 types. Exactly 120 (15%) are held out for evaluation, 680 are for training.
The split is stratified so that the held-out prompts' constraint types come in the same
proportions as training's (see ``_split``: strata by primary type and number of constraints with
largest-remainder quotas, then seeded within-stratum swaps that match every type's share; each
type's held-out share is within 0.01 of its training share). Comparing trained and reference
policies on the held-out prompts then measures the same task the policy was trained on.

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
NUM_PROMPTS = 800
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
    # Added with the 800-prompt version (science, daily life, work, travel, food, nature,
    # history, tech, health, hobbies).
    ("Explain how a magnet attracts metal.", ["magnet", "iron", "field", "poles"]),
    ("Explain why ice floats on water.", ["ice", "water", "dense", "float"]),
    ("Explain how the heart pumps blood.", ["heart", "blood", "body", "beat"]),
    ("Explain what an earthquake is.", ["ground", "shake", "plates", "earth"]),
    ("Explain how a seed grows into a plant.", ["seed", "roots", "soil", "water"]),
    ("Explain why leaves change color in autumn.", ["leaves", "green", "autumn", "color"]),
    ("Explain how sound travels.", ["sound", "waves", "air", "ears"]),
    ("Explain what gravity does.", ["gravity", "fall", "earth", "pull"]),
    ("Explain how a thermometer works.", ["temperature", "heat", "scale", "glass"]),
    ("Explain why the stars twinkle at night.", ["stars", "air", "light", "night"]),
    ("Explain how a battery stores energy.", ["battery", "energy", "power", "charge"]),
    ("Explain what a fossil is.", ["bones", "rock", "ancient", "fossil"]),
    ("Explain how clouds make rain.", ["clouds", "drops", "water", "rain"]),
    ("Explain why we need to brush our teeth.", ["teeth", "brush", "germs", "smile"]),
    ("Explain how a lighthouse helps ships.", ["light", "ships", "coast", "night"]),
    ("Explain what a desert is like.", ["sand", "hot", "dry", "cactus"]),
    ("Explain how birds fly.", ["wings", "air", "feathers", "birds"]),
    ("Explain why some animals sleep through the winter.", ["winter", "food", "sleep", "cold"]),
    ("Explain how a microwave heats food.", ["microwave", "food", "heat", "water"]),
    ("Explain what a telescope does.", ["telescope", "stars", "lens", "sky"]),
    ("Describe your morning routine on a school day.", ["alarm", "breakfast", "bag", "bus"]),
    ("Give tips for keeping a tidy bedroom.", ["clothes", "bed", "shelf", "clean"]),
    ("Describe a rainy Sunday afternoon.", ["rain", "window", "blanket", "movie"]),
    ("Give advice for doing laundry.", ["clothes", "wash", "soap", "dry"]),
    ("Describe a visit to the grocery store.", ["cart", "vegetables", "bread", "milk"]),
    ("Give tips for waking up early.", ["alarm", "sleep", "light", "morning"]),
    ("Describe your favorite room in a house.", ["room", "window", "chair", "light"]),
    ("Give advice for walking a dog.", ["dog", "leash", "walk", "park"]),
    ("Describe a family dinner.", ["table", "food", "family", "talk"]),
    ("Give tips for packing a school lunch.", ["sandwich", "fruit", "water", "box"]),
    ("Describe a neighbor you like.", ["neighbor", "kind", "garden", "help"]),
    ("Give advice for moving to a new home.", ["boxes", "pack", "home", "neighbors"]),
    ("Give tips for running a good team meeting.", ["agenda", "time", "team", "notes"]),
    ("Describe a day in the life of a nurse.", ["patients", "hospital", "care", "shift"]),
    ("Give advice for working from home.", ["desk", "breaks", "routine", "quiet"]),
    ("Write a short note asking a coworker for help.", ["help", "project", "thanks", "time"]),
    ("Describe what a firefighter does.", ["fire", "truck", "people", "safety"]),
    ("Give tips for managing your time at work.", ["tasks", "list", "time", "focus"]),
    ("Write a short message welcoming a new colleague.", ["welcome", "team", "office", "glad"]),
    ("Describe the job of a farmer.", ["crops", "animals", "fields", "weather"]),
    ("Give advice for asking for a raise.", ["salary", "work", "results", "manager"]),
    ("Describe what a teacher does during a school day.", ["students", "lesson", "class",
                                                          "questions"]),
    ("Give tips for packing a suitcase.", ["clothes", "suitcase", "roll", "shoes"]),
    ("Describe your dream vacation.", ["beach", "sun", "hotel", "relax"]),
    ("Give advice for a first trip abroad.", ["passport", "money", "language", "map"]),
    ("Describe a busy airport.", ["planes", "gates", "travelers", "bags"]),
    ("Write a short postcard from a seaside town.", ["sea", "weather", "town", "wish"]),
    ("Give tips for camping in the woods.", ["tent", "fire", "water", "trees"]),
    ("Describe a road trip with friends.", ["car", "road", "music", "friends"]),
    ("Give advice for staying safe while traveling.", ["bag", "money", "careful", "hotel"]),
    ("Describe a walk through an old town.", ["streets", "houses", "stone", "old"]),
    ("Describe a visit to a zoo.", ["animals", "lions", "children", "zoo"]),
    ("Explain how to make a simple salad.", ["lettuce", "tomato", "oil", "bowl"]),
    ("Describe the smell of fresh bread.", ["bread", "warm", "oven", "smell"]),
    ("Give tips for eating more vegetables.", ["vegetables", "soup", "meals", "fresh"]),
    ("Explain how to make a cup of tea.", ["water", "tea", "cup", "boil"]),
    ("Describe your favorite soup.", ["soup", "warm", "bowl", "vegetables"]),
    ("Explain why breakfast is important.", ["breakfast", "energy", "morning", "food"]),
    ("Give advice for baking cookies.", ["butter", "sugar", "oven", "dough"]),
    ("Describe a meal from a street food stall.", ["food", "spicy", "stall", "street"]),
    ("Explain how cheese is made.", ["milk", "cheese", "salt", "time"]),
    ("Give tips for cooking rice.", ["rice", "water", "pot", "heat"]),
    ("Describe a summer fruit salad.", ["berries", "melon", "sweet", "summer"]),
    ("Explain how to make pancakes.", ["flour", "eggs", "milk", "pan"]),
    ("Describe a sunrise over a lake.", ["sun", "water", "sky", "morning"]),
    ("Describe a river flowing through a valley.", ["river", "valley", "water", "stones"]),
    ("Explain why trees are important.", ["trees", "air", "shade", "animals"]),
    ("Describe a field of wildflowers.", ["flowers", "colors", "bees", "grass"]),
    ("Describe a snowy mountain peak.", ["snow", "mountain", "wind", "cold"]),
    ("Explain how ants work together.", ["ants", "colony", "food", "queen"]),
    ("Describe a beach at sunset.", ["sand", "waves", "sun", "orange"]),
    ("Explain what a coral reef is.", ["coral", "fish", "ocean", "reef"]),
    ("Describe the sounds of a jungle.", ["birds", "insects", "trees", "rain"]),
    ("Explain why we should protect wild animals.", ["animals", "nature", "habitat", "protect"]),
    ("Describe a garden in spring.", ["flowers", "green", "spring", "birds"]),
    ("Explain how the pyramids of Egypt were built.", ["stone", "workers", "pyramids", "desert"]),
    ("Explain what life was like in a medieval castle.", ["castle", "king", "walls", "knights"]),
    ("Explain why the printing press mattered.", ["books", "printing", "ideas", "people"]),
    ("Describe what the first cars were like.", ["cars", "engine", "roads", "slow"]),
    ("Explain how people sent messages before phones.", ["letters", "mail", "messages",
                                                         "horse"]),
    ("Explain why the invention of the wheel was important.", ["wheel", "carts", "move",
                                                               "heavy"]),
    ("Explain what the Olympic Games are.", ["sports", "athletes", "countries", "medals"]),
    ("Describe a day in an ancient Roman city.", ["market", "streets", "baths", "people"]),
    ("Explain how early explorers crossed the ocean.", ["ships", "stars", "wind", "sea"]),
    ("Explain what a smartphone can do.", ["phone", "apps", "camera", "calls"]),
    ("Give tips for making a strong password.", ["password", "letters", "numbers", "long"]),
    ("Explain what a search engine does.", ["search", "web", "pages", "results"]),
    ("Explain how email gets from one person to another.", ["email", "server", "message",
                                                            "internet"]),
    ("Explain what a robot is.", ["robot", "machine", "tasks", "sensors"]),
    ("Give advice for spending less time on screens.", ["screen", "phone", "time", "outside"]),
    ("Explain how a video call works.", ["camera", "internet", "video", "sound"]),
    ("Explain what online shopping is.", ["online", "order", "delivery", "store"]),
    ("Explain how a GPS map finds your location.", ["satellites", "signal", "map", "location"]),
    ("Explain what a spreadsheet is used for.", ["rows", "numbers", "columns", "data"]),
    ("Give tips for drinking enough water.", ["water", "bottle", "day", "thirsty"]),
    ("Explain why walking is good for you.", ["walking", "heart", "legs", "health"]),
    ("Give advice for reducing stress.", ["stress", "breathe", "rest", "friends"]),
    ("Explain why we should wash our hands.", ["hands", "soap", "germs", "water"]),
    ("Give tips for a healthy lunch.", ["vegetables", "bread", "fruit", "water"]),
    ("Explain what a vaccine does.", ["vaccine", "body", "disease", "immune"]),
    ("Give advice for sitting less during the day.", ["stand", "walk", "chair", "stretch"]),
    ("Explain why sunscreen is important.", ["sun", "skin", "burn", "protect"]),
    ("Give tips for starting a stamp collection.", ["stamps", "album", "collect", "countries"]),
    ("Describe the joy of reading a good book.", ["book", "story", "pages", "characters"]),
    ("Give advice for learning to draw.", ["pencil", "paper", "practice", "shapes"]),
    ("Describe a game of chess.", ["chess", "board", "king", "move"]),
    ("Give tips for starting a vegetable garden.", ["seeds", "soil", "water", "sun"]),
    ("Describe the fun of building a puzzle.", ["pieces", "puzzle", "picture", "edges"]),
    ("Give advice for taking better photos.", ["light", "camera", "photo", "angle"]),
    ("Describe learning to swim.", ["water", "pool", "arms", "breathe"]),
    ("Give tips for knitting a first scarf.", ["yarn", "needles", "scarf", "stitch"]),
    ("Describe a day of fishing at a lake.", ["fish", "lake", "boat", "patience"]),
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

START_PHRASES = ["Sure", "Here is", "In short", "Of course", "Well", "To begin"]
END_PHRASES = ["Is there anything else?", "That is all.", "Thank you for reading.",
               "Stay curious.", "Have a nice day.", "I hope this helps."]
# (min, max) word bounds; None is an open side. Small enough for a 64-128 token answer.
WORD_BOUNDS = [(20, None), (30, None), (40, None), (None, 30), (None, 40), (None, 50),
               (None, 60), (None, 70), (20, 40), (25, 50), (30, 60), (40, 70)]


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


def _largest_remainder(sizes: dict[tuple, int], total: int, rng: random.Random) -> dict[tuple, int]:
    """Split ``total`` over strata in proportion to their sizes: floors first, then one more for
    the largest remainders (ties in seeded random order), so the quotas sum to ``total``."""
    n = sum(sizes.values())
    exact = {k: total * size / n for k, size in sizes.items()}
    quota = {k: int(v) for k, v in exact.items()}
    tie = {k: rng.random() for k in sizes}
    order = sorted(sizes, key=lambda k: (quota[k] - exact[k], tie[k]))
    for k in order[:total - sum(quota.values())]:
        quota[k] += 1
    return quota


def _split(rows: list[dict], heldout: int, rng: random.Random) -> None:
    """Mark ``heldout`` rows as held-out so that its constraint types have training's proportions.

    Why: a held-out set whose mix of types differs from training's would measure a different
    task. Step 1 stratifies by (primary type, number of constraints) and gives each stratum its
    largest-remainder share of ``heldout``, drawn at random; this keeps the primary types and the
    number of constraints per prompt in proportion (up to rounding). Step 2 fixes the secondary
    types: seeded random swaps of a held-out row with a training row of the same stratum are
    kept while they bring every type's held-out count closer (sum of squares) to its exact share
    ``heldout * count / len(rows)``, until 3000 tries in a row bring nothing.
    """
    def stratum(row: dict) -> tuple:
        return row["constraints"][0]["type"], len(row["constraints"])

    strata: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault(stratum(row), []).append(i)
    quota = _largest_remainder({k: len(v) for k, v in strata.items()}, heldout, rng)
    held = [i for k in sorted(strata) for i in sorted(rng.sample(strata[k], quota[k]))]
    types = [[c["type"] for c in row["constraints"]] for row in rows]
    total = {t: sum(t in ts for ts in types) for t in TYPES}
    target = {t: heldout * total[t] / len(rows) for t in TYPES}
    count = {t: sum(t in types[i] for i in held) for t in TYPES}
    in_held = set(held)
    fails = 0
    while fails < 3000 and held:
        slot = rng.randrange(len(held))
        out = held[slot]
        candidates = [j for j in strata[stratum(rows[out])] if j not in in_held]
        if not candidates:
            fails += 1
            continue
        new = rng.choice(candidates)
        moved = dict(count)
        for t in types[out]:
            moved[t] -= 1
        for t in types[new]:
            moved[t] += 1
        if (sum((moved[t] - target[t]) ** 2 for t in TYPES)
                < sum((count[t] - target[t]) ** 2 for t in TYPES)):
            count, held[slot], fails = moved, new, 0
            in_held.remove(out)
            in_held.add(new)
        else:
            fails += 1
    for i in in_held:
        rows[i]["split"] = "heldout"


def generate(seed: int = SEED, num_prompts: int = NUM_PROMPTS,
             heldout_fraction: float = HELDOUT_FRACTION) -> list[dict]:
    """All prompts in id order; ``round(heldout_fraction * num_prompts)`` are held out (see
    ``_split``). Prompt ``i`` (0-based) uses topic ``i % len(TOPICS)``."""
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
    _split(rows, round(heldout_fraction * num_prompts), rng)
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
