"""A pilot that picks the (chosen, rejected) positions for this model (``selection=pilot``).

The sweet-spot positions were found on 8B models (Xiao et al., ACL 2025); which rejected position
suits another model is an empirical question, and the seed's last lesson is that one size does
not fit all. So, before the full run, the pilot stage (``sweetspot/pilot_stage.py``) trains a
short LoRA run for each candidate pair of positions on a subset of the train prompts, scores each
run's greedy answers to prompts it kept back (its own validation prompts, drawn from the train
split: the run's held-out prompts stay untouched for the final evaluation) against the untrained
policy's, with paired-bootstrap intervals, and picks the best. The full run then selects with
``Positions(pair=<pick>)`` and this strategy's composition fields.

Defaults: the five pairs the seed's discussion turns on, max/min (the usual extremes),
max/mu-2sigma (the sweet spot), max/mu-sigma and max/mu (the rejected moving up), and
mu+sigma/mu-sigma (neither extreme); 20% of the train prompts, half of them kept back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sweetspot.errors import ConfigError, SweetspotError
from sweetspot.selection.base import PilotSettings, SelectionStrategy
from sweetspot.selection.common import PairArrays, PairStrategy
from sweetspot.selection.matrix import ResponseMatrix
from sweetspot.selection.positions import Positions
from sweetspot.validation import at_least, fraction, one_of, require

DEFAULT_PAIRS = ("max/min", "max/mu-2sigma", "max/mu-sigma", "max/mu", "mu+sigma/mu-sigma")
PICKS = ("mean", "lower")


@dataclass(kw_only=True)
class Pilot(PairStrategy):
    """Candidate ``pairs`` ("<chosen>/<rejected>", as ``selection=positions``'s ``pair``), each
    trained for ``steps`` steps (at ``lr``; null: the trainer's) on ``prompt_fraction`` of the
    train prompts minus the ``validation_fraction`` of them kept back for scoring; ``pick``:
    "mean" (largest mean reward difference) or "lower" (largest lower bound of its 95% CI).
    Ties go to the earlier pair in ``pairs``."""

    pairs: list[str] = field(default_factory=lambda: list(DEFAULT_PAIRS))
    prompt_fraction: float = 0.2
    validation_fraction: float = 0.5
    steps: int = 16
    lr: float | None = None
    seed: int = 0
    pick: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.pairs) >= 1, "pairs", "needs at least one candidate pair")
        require(len(set(self.pairs)) == len(self.pairs), "pairs",
                f"lists a pair twice: {list(self.pairs)}")
        for i, pair in enumerate(self.pairs):
            try:
                self.candidate(pair)
            except ConfigError as e:
                raise ConfigError(f"pairs[{i}]", e.message) from None
        fraction("prompt_fraction", self.prompt_fraction)
        require(0 < self.validation_fraction < 1, "validation_fraction",
                "must be in (0, 1): some prompts train, some score; got "
                f"{self.validation_fraction}")
        at_least("steps", self.steps, 1)
        if self.lr is not None:
            require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        at_least("seed", self.seed, 0)
        one_of("pick", self.pick, PICKS)

    def candidate(self, pair: str) -> Positions:
        """The full run's strategy for ``pair``: the positions with this strategy's composition
        (top_fraction, min_margin, ... apply to the pilot's candidates as to the full run)."""
        return Positions(
            pair=pair,
            top_fraction=self.top_fraction,
            top_k=self.top_k,
            min_margin=self.min_margin,
            max_pairs_per_prompt=self.max_pairs_per_prompt,
            augment=self.augment,
            block_rows=self.block_rows,
        )

    @property
    def needs_pilot(self) -> bool:
        return True

    def pilot_settings(self) -> PilotSettings:
        return PilotSettings(
            candidates={p: self.candidate(p) for p in self.pairs},
            prompt_fraction=self.prompt_fraction,
            validation_fraction=self.validation_fraction,
            steps=self.steps,
            lr=self.lr,
            seed=self.seed,
            pick=self.pick,
            key={
                "pairs": list(self.pairs),
                "composition": {
                    "top_fraction": self.top_fraction, "top_k": self.top_k,
                    "min_margin": self.min_margin,
                    "max_pairs_per_prompt": self.max_pairs_per_prompt,
                    "augment": None if self.augment is None else asdict(self.augment),
                },
                "prompt_fraction": self.prompt_fraction,
                "validation_fraction": self.validation_fraction,
                "steps": self.steps,
                "lr": self.lr,
                "seed": self.seed,
                "pick": self.pick,
            },
        )

    def after_pilot(self, pick: str) -> SelectionStrategy:
        require(pick in self.pairs, "pairs", f"the pilot picked {pick!r}, not a candidate")
        return self.candidate(pick)

    def make_pairs(self, m: ResponseMatrix) -> PairArrays:
        raise SweetspotError(
            "selection=pilot selects only after its pilot stage has picked a pair: run it "
            "through the pipeline (sweetspot selection=pilot), or use selection=positions "
            "selection.pair=<pair> directly"
        )
