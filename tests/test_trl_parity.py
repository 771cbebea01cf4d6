"""Loss parity with TRL 1.x's DPOTrainer on the same log-probs.

TRL computes its losses inline in ``DPOTrainer._compute_loss``, right after the policy forward, so
they can only be reached through a trainer and a model. The test builds a random-init tiny Llama
and a word-level tokenizer in code (conftest's ``word_level_lm``; nothing is downloaded), a
trainer per loss type with ``precompute_ref_log_probs=True`` so that the reference log-probs are
read from the batch: they are set to random values here. The policy's summed completion log-probs
are computed independently from the same model's logits. TRL reduces with a batch mean, so
per-pair values are compared through batches of one pair.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from sweetspot.training import losses as L  # noqa: E402

VOCAB_SIZE = 32  # conftest.WORD_VOCAB: <pad>, <eos>, <unk>, w0 ... w28
FIRST_WORD = 3
NUM_PAIRS = 6
REF_NOISE = 6.0  # spread of reference minus policy log-probs, in nats: beta * D spans both tails
TOL = 1e-5


def make_trainer(word_level_lm, tmp_path, loss_type: str, beta: float,
                 label_smoothing: float) -> DPOTrainer:
    """A trainer on a fresh word-level tiny Llama (conftest's ``word_level_lm``)."""
    tok, model = word_level_lm()
    args = DPOConfig(output_dir=str(tmp_path / loss_type), report_to=[], use_cpu=True,
                     loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing,
                     precompute_ref_log_probs=True, gradient_checkpointing=False,
                     disable_tqdm=True)
    dataset = Dataset.from_dict({"prompt": ["w1 w2"], "chosen": [" w3"], "rejected": [" w4"]})
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)


def random_pairs() -> list[dict]:
    g = torch.Generator().manual_seed(1)

    def ids(low: int, high: int) -> list[int]:
        n = int(torch.randint(low, high, (1,), generator=g))
        return torch.randint(FIRST_WORD, VOCAB_SIZE, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(2, 6), "chosen_ids": ids(1, 7), "rejected_ids": ids(1, 7)}
            for _ in range(NUM_PAIRS)]


@torch.no_grad()
def summed_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs and token counts, from the full logits (not TRL's code)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].to(token_logp.dtype)
    return (token_logp * mask).sum(dim=1), mask.sum(dim=1)


CASES = [  # TRL loss_type, sweetspot loss, beta, label_smoothing
    ("sigmoid", L.DPOLoss, 0.1, 0.0),
    ("sigmoid", L.DPOLoss, 1.0, 0.0),
    ("hinge", L.HingeLoss, 0.5, 0.0),
    ("ipo", L.IPOLoss, 0.1, 0.0),
    ("robust", L.RobustLoss, 0.1, 0.2),
    ("sft", L.SFTLoss, 0.1, 0.0),
]


@pytest.mark.parametrize("loss_type, cls, beta, label_smoothing", CASES)
def test_per_pair_loss_matches_trl(word_level_lm, tmp_path, loss_type, cls, beta,
                                   label_smoothing):
    trainer = make_trainer(word_level_lm, tmp_path, loss_type, beta, label_smoothing)
    pairs = random_pairs()
    batch = trainer.data_collator(pairs)
    logps, lengths = summed_logps(trainer.model, batch)
    policy_chosen, policy_rejected = logps.chunk(2)
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    g = torch.Generator().manual_seed(2)
    ref_chosen = policy_chosen + REF_NOISE * torch.randn(NUM_PAIRS, generator=g)
    ref_rejected = policy_rejected + REF_NOISE * torch.randn(NUM_PAIRS, generator=g)

    zeros = torch.zeros(NUM_PAIRS)
    inputs = L.LossInputs(
        policy_chosen_logps=policy_chosen, policy_rejected_logps=policy_rejected,
        ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
        chosen_reward=zeros, rejected_reward=zeros,
        route_sft=torch.zeros(NUM_PAIRS, dtype=torch.bool), weight=torch.ones(NUM_PAIRS))
    kwargs = {"label_smoothing": label_smoothing} if label_smoothing else {}
    ours = cls(beta=beta, **kwargs)(inputs)

    trl_per_pair = []
    with torch.no_grad():
        for i, pair in enumerate(pairs):
            one = trainer.data_collator([{**pair, "ref_chosen_logps": float(ref_chosen[i]),
                                          "ref_rejected_logps": float(ref_rejected[i])}])
            trl_per_pair.append(float(trainer.compute_loss(trainer.model, one)))
    assert ours.per_pair.tolist() == pytest.approx(trl_per_pair, abs=TOL, rel=TOL)
    if loss_type == "hinge":  # both sides of the hinge are exercised
        assert min(trl_per_pair) == 0.0 < max(trl_per_pair)

    if loss_type != "sft":  # TRL pools the SFT loss over the batch's tokens; ours is per pair
        with torch.no_grad():
            full = trainer.data_collator([
                {**pair, "ref_chosen_logps": float(ref_chosen[i]),
                 "ref_rejected_logps": float(ref_rejected[i])} for i, pair in enumerate(pairs)])
            trl_mean = float(trainer.compute_loss(trainer.model, full))
        assert ours.loss.item() == pytest.approx(trl_mean, abs=TOL, rel=TOL)
        trl_rewards = trainer._metrics["eval" if not trainer.model.training else "train"]
        assert ours.metrics["rewards/margin"].item() == pytest.approx(
            trl_rewards["rewards/margins"][-1], abs=TOL, rel=TOL)
