"""Cache keys: every field that changes a stage's output changes that stage's key (and the keys
downstream of it, and no other); every execution-only field changes no key.

``stage_keys`` computes the keys from the composed config alone (no model, no cache); the last
test checks that a real run uses exactly those keys, so the rest can test the function.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from sweetspot.config import config_dir
from sweetspot.pipeline import run_pipeline
from sweetspot.stage_keys import stage_keys

# Which stages read which (the pipeline's inputs), written out here independently of the code.
READS = {
    "prompts": [],
    "sample": ["prompts"],
    "score": ["sample"],
    "denoise": ["score"],
    "implicit": ["denoise"],
    "select": ["denoise", "implicit"],
    "train": ["select"],
    "answers_reference": ["prompts"],
    "answers_trained": ["prompts", "train"],
}

BASE = ("logger=csv",)
MARGIN = ("selection=margin",)  # dual margin: has the implicit sub-stage
ROUTING = ("selection=routing", "selection.margin_source=implicit")


def compose_cfg(*overrides: str, update: dict | None = None) -> DictConfig:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    for key, value in (update or {}).items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def downstream(direct: set[str], present: set[str]) -> set[str]:
    """The stages ``direct`` and every stage that reads one of them, transitively."""
    out = set(direct) & present
    grew = True
    while grew:
        grew = False
        for stage, reads in READS.items():
            if stage in present and stage not in out and out & set(reads):
                out.add(stage)
                grew = True
    return out


# (base overrides, changed overrides, stages whose own output changes)
OUTPUT_FIELDS = [
    (BASE, ("task.max_train=10",), {"prompts"}),
    (BASE, ("sampler.n=4",), {"sample"}),
    (BASE, ("sampler.max_new_tokens=32",), {"sample"}),
    (BASE, ("sampler.temperature=0.5",), {"sample"}),
    (BASE, ("sampler.use_n=4",), {"denoise"}),  # the first 4 of the same samples
    (BASE, ("model=tiny",), {"sample", "train", "answers_reference"}),
    # the run's scorer also scores the answers (evaluation.scorer is null)
    (BASE, ("scorer.partial_credit_width=0.3",), {"score", "answers_reference",
                                                  "answers_trained"}),
    (BASE, ("denoiser=rpca",), {"denoise"}),
    (("denoiser=rpca",), ("denoiser=rpca", "denoiser.corrupt=0.1"), {"denoise"}),
    (("denoiser=rpca",), ("denoiser=rpca", "denoiser.tol=1e-3"), {"denoise"}),
    (BASE, ("selection.rejected=min",), {"select"}),
    (BASE, ("selection.top_k=5",), {"select"}),
    (BASE, ("selection=augment",), {"select", "answers_trained"}),  # + conditioned generation
    (BASE, ("loss.beta=0.05",), {"train"}),
    (BASE, ("loss=ipo",), {"train"}),
    (BASE, ("trainer.lr=1e-4",), {"train"}),
    (BASE, ("trainer.batch_size=8",), {"train"}),
    (BASE, ("trainer.max_steps=3",), {"train"}),
    (BASE, ("evaluation.max_new_tokens=32",), {"answers_reference", "answers_trained"}),
    (BASE, ("evaluation.greedy=false",), {"answers_reference", "answers_trained"}),
    # the implicit sub-stage trains on the candidate pairs: they are in its key (issue 12.1)
    (MARGIN, ("selection.rejected=mu-2sigma",), {"implicit", "select"}),
    (MARGIN, ("selection.chosen=mu+sigma",), {"implicit", "select"}),
    (MARGIN, ("selection.candidates=data",), {"implicit", "select"}),
    (MARGIN, ("selection.implicit_steps=3",), {"implicit", "select"}),
    (MARGIN, ("selection.implicit_beta=0.2",), {"implicit", "select"}),
    (MARGIN, ("trainer.lr=1e-4",), {"implicit", "train"}),
    (MARGIN, ("model=tiny",), {"sample", "implicit", "train", "answers_reference"}),
    (MARGIN, ("selection.top_fraction=1.0",), {"select"}),  # less_is_more's arms share implicit
    (MARGIN, ("selection.search_min_count=5",), {"select"}),
    (ROUTING, ("selection.rejected=mu-2sigma",), {"implicit", "select"}),
    (ROUTING, ("selection.threshold=0.3",), {"select"}),
    (ROUTING, ("selection.curriculum=true",), {"select", "train"}),  # and the loader's order
]


@pytest.mark.parametrize(("base", "change", "direct"), OUTPUT_FIELDS,
                         ids=[" ".join(c) for _, c, _ in OUTPUT_FIELDS])
def test_output_field_changes_its_stage_and_downstream(base, change, direct) -> None:
    before = stage_keys(compose_cfg(*base))
    after = stage_keys(compose_cfg(*base, *change))
    assert set(before) == set(after)
    expected = downstream(direct, set(before))
    changed = {s for s in before if before[s] != after[s]}
    assert changed == expected


RM = ("scorer=reward_model", "scorer.name_or_path=/models/rm")
EXECUTION_FIELDS = [
    (RM, ("scorer.batch_size=2", "scorer.device=cpu", "scorer.bucket_by_length=false")),
    (("scorer=implicit", "scorer.policy_path=/p", "scorer.reference_path=/r"),
     ("scorer.batch_size=1", "scorer.device=cpu")),
    (BASE, ("selection.block_rows=16",)),
    (MARGIN, ("selection.block_rows=16",)),
    (ROUTING, ("selection.block_rows=3",)),
    (("denoiser=rpca",), ("denoiser.chunk_size=8",)),
    (BASE, ("sampler.batch_size=2", "sampler.shard_size=4")),
    (BASE, ("trainer.ref_batch_size=2", "trainer.log_every_n_steps=5",
            "trainer.checkpoint_every_n_steps=0", "trainer.layout=stacked",
            "trainer.gradient_checkpointing=true")),
    (MARGIN, ("trainer.ref_batch_size=2", "trainer.layout=prefix")),
    (BASE, ("evaluation.batch_size=2", "evaluation.kl_batch_size=3")),
]


@pytest.mark.parametrize(("base", "change"), EXECUTION_FIELDS,
                         ids=[" ".join(c) for _, c in EXECUTION_FIELDS])
def test_execution_only_field_changes_no_key(base, change) -> None:
    assert stage_keys(compose_cfg(*base, *change)) == stage_keys(compose_cfg(*base))


def test_nested_scorer_nodes_drop_execution_fields_too() -> None:
    """An ensemble's components and ``evaluation.scorer`` are scorer nodes themselves."""
    component = {"_target_": "sweetspot.scoring.reward_model.RewardModelScorer",
                 "name": "rm", "name_or_path": "/models/rm", "batch_size": 8}
    rules = {"_target_": "sweetspot.scoring.rules.RulesScorer", "name": "rules"}

    def ensemble(batch_size: int, width: float) -> dict:
        return {"scorer.scorers": [{**rules, "partial_credit_width": width},
                                   {**component, "batch_size": batch_size}]}

    base = stage_keys(compose_cfg("scorer=ensemble", update=ensemble(8, 0.5)))
    assert stage_keys(compose_cfg("scorer=ensemble", update=ensemble(2, 0.5))) == base
    moved = stage_keys(compose_cfg("scorer=ensemble", update=ensemble(8, 0.3)))
    assert moved["score"] != base["score"]

    evaluated = stage_keys(compose_cfg(*BASE, update={"evaluation.scorer": component}))
    smaller = stage_keys(compose_cfg(*BASE, update={"evaluation.scorer": {**component,
                                                                          "batch_size": 1}}))
    assert evaluated == smaller
    other = stage_keys(compose_cfg(*BASE, update={"evaluation.scorer": {
        **component, "name_or_path": "/models/other"}}))
    assert {s for s in other if other[s] != evaluated[s]} == {"answers_reference",
                                                             "answers_trained"}


def test_run_uses_the_computed_keys(make_cfg, tmp_path: Path) -> None:
    """A real run (tiny model, pairs only) records exactly the keys ``stage_keys`` gives."""
    cfg = make_cfg("experiment=tiny", "logger=csv", "task.max_train=4", "until=select",
                   "sampler.n=4", "sampler.max_new_tokens=8")
    run_pipeline(cfg, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "stages.json").read_text())
    expected = stage_keys(cfg)
    assert {s: e["key"] for s, e in recorded.items()} == {s: expected[s] for s in recorded}
    assert set(recorded) == {"prompts", "sample", "score", "denoise", "select"}
