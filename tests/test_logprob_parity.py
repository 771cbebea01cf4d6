"""Log-prob parity with TRL 1.x, and the step-0 loss in closed form through the real trainer.

TRL's DPOTrainer scores a batch with ``model(..., labels=..., fused_lm_head=True).log_probs``
(its fused LM head, added to the model in the trainer's constructor) summed over the completion
tokens; ``compute_ref_log_probs`` is that computation for one collated batch, the one both its
reference pass and its policy forward use. Here the same pairs (token ids from sweetspot's
tokenisation of the tiny model's chat template) go through TRL's collator and that method, and
through sweetspot's ``completion_logps`` (stacked batch, TRL's own tensors), the shared-prompt
layout (one row per pair) and the prefix layout (prompt keys and values reused).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sweetspot.cache import StageCache
from sweetspot.models import Policy, load_causal_lm
from sweetspot.training import losses
from sweetspot.training.config import LoraOptions, TrainerConfig
from sweetspot.training.data import collate_prefix, collate_shared, tokenize_pairs
from sweetspot.training.logprobs import batch_logps, completion_logps
from sweetspot.training.train import train_policy

pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from tests.train_worker import synthetic_pairs  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_policy) -> tuple[StageCache, Policy]:
    """The tiny policy of seed 3 (conftest) and this module's own stage cache."""
    return StageCache(tmp_path_factory.mktemp("parity-cache")), tiny_policy(init_seed=3)


def test_completion_logps_match_trl(tiny, tmp_path: Path) -> None:
    _, policy = tiny
    tok = policy.tokenizer
    pairs, _ = tokenize_pairs(synthetic_pairs(6, seed=5), tok, 256, 128)
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False,
                     precompute_ref_log_probs=True, gradient_checkpointing=False,
                     disable_tqdm=True, max_length=None)
    trainer = DPOTrainer(
        model=load_causal_lm(policy.path, policy.spec), args=args, processing_class=tok,
        train_dataset=Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]}),
    )
    model = trainer.model.eval()
    examples = [{"prompt_ids": p.prompt, "chosen_ids": p.chosen, "rejected_ids": p.rejected}
                for p in pairs]
    batch = trainer.data_collator(examples)
    with torch.no_grad():
        trl_chosen, trl_rejected = trainer.compute_ref_log_probs(model, batch)
        trl = torch.cat([trl_chosen, trl_rejected]).float()
        stacked = completion_logps(model, batch["input_ids"], batch["attention_mask"],
                                   batch["completion_mask"])
        shared = batch_logps(model, collate_shared(pairs, tok.pad_token_id))
        prefix = batch_logps(model, collate_prefix(pairs, tok.pad_token_id))
    lengths = batch["completion_mask"].sum(dim=1)
    assert lengths.tolist() == [len(p.chosen) for p in pairs] + [len(p.rejected) for p in pairs]
    for ours in (stacked, shared, prefix):
        torch.testing.assert_close(ours, trl, rtol=1e-6, atol=1e-5)  # sums of ~100 tokens
        torch.testing.assert_close(ours / lengths, trl / lengths, rtol=0, atol=1e-6)


CLOSED_FORM = [  # loss, its value when policy == reference (D = 0)
    (losses.DPOLoss(beta=0.1), math.log(2)),
    (losses.IPOLoss(beta=0.1), (1 / (2 * 0.1)) ** 2),
    (losses.HingeLoss(beta=0.5), 1.0),
    (losses.RobustLoss(beta=0.1, label_smoothing=0.2), math.log(2)),
]


@pytest.mark.parametrize("loss, expected", CLOSED_FORM, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_step0_loss_is_its_closed_form(tiny, tmp_path: Path, loss, expected, lora) -> None:
    """One step through train_policy (LightningModule, Trainer, cached reference): at step 0
    the policy is the reference (LoRA's B starts at 0), so the DPO margin is 0."""
    cache, policy = tiny
    cfg = TrainerConfig(batch_size=4, ref_batch_size=4, max_steps=1, warmup_ratio=0.0,
                        checkpoint_every_n_steps=0, lora=LoraOptions(enabled=lora))
    metrics = train_policy(synthetic_pairs(8), policy, cfg, loss, cache,
                           tmp_path, [])
    assert metrics["train/steps"] == 1
    assert metrics["train/first_loss"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert metrics["train/rewards/margin"] == pytest.approx(0.0, abs=1e-6)
