"""The DPO loss family against closed forms written here with plain ``math``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sweetspot.config import build_node, validate
from sweetspot.errors import ConfigError
from sweetspot.training import losses as L

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"

# Three pairs, written out so every closed form below can be computed by hand.
PC = [-10.0, -20.0, -5.0]  # policy, chosen
PR = [-12.0, -15.0, -9.0]  # policy, rejected
RC = [-11.0, -18.0, -5.5]  # reference, chosen
RR = [-11.5, -16.0, -8.0]  # reference, rejected
LC = [4.0, 10.0, 2.0]  # chosen token counts
LR = [5.0, 8.0, 3.0]  # rejected token counts
SC = [7.0, 5.0, 9.0]  # chosen external score
SR = [3.0, 4.5, 1.0]  # rejected external score
ROUTE = [False, True, False]
B = len(PC)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def margin(i: int) -> float:
    return (PC[i] - RC[i]) - (PR[i] - RR[i])


def make_inputs(pc=PC, pr=PR, rc=RC, rr=RR, weight=None, route=ROUTE,
                requires_grad: bool = False) -> L.LossInputs:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    policy_c, policy_r = t(pc), t(pr)
    policy_c.requires_grad_(requires_grad)
    policy_r.requires_grad_(requires_grad)
    return L.LossInputs(
        policy_chosen_logps=policy_c, policy_rejected_logps=policy_r,
        ref_chosen_logps=t(rc), ref_rejected_logps=t(rr),
        chosen_lengths=t(LC), rejected_lengths=t(LR),
        chosen_reward=t(SC), rejected_reward=t(SR),
        route_sft=torch.tensor(route), weight=t(weight or [1.0] * B))


# Closed forms, one per loss, as functions of the pair index.
def dpo_closed(beta):
    return lambda i: -logsig(beta * margin(i))


def cdpo_closed(beta, eps):
    return lambda i: -(1 - eps) * logsig(beta * margin(i)) - eps * logsig(-beta * margin(i))


def robust_closed(beta, eps):
    return lambda i: ((-(1 - eps) * logsig(beta * margin(i)) + eps * logsig(-beta * margin(i)))
                      / (1 - 2 * eps))


def hinge_closed(beta):
    return lambda i: max(0.0, 1 - beta * margin(i))


def ipo_closed(beta):
    def f(i):
        d = (PC[i] - RC[i]) / LC[i] - (PR[i] - RR[i]) / LR[i]
        return (d - 1 / (2 * beta)) ** 2
    return f


def nll(i):
    return -PC[i] / LC[i]


def rpo_closed(beta, alpha):
    return lambda i: -logsig(beta * margin(i)) + alpha * nll(i)


def rdpo_closed(beta, beta_1):
    return lambda i: -logsig(beta * margin(i) - beta * (SC[i] - SR[i]) / beta_1)


def hybrid_closed(beta, eps):
    return lambda i: nll(i) if ROUTE[i] else cdpo_closed(beta, eps)(i)


COMBO_PARTS = [{"_target_": "sweetspot.training.losses.DPOLoss", "beta": 0.2},
               {"_target_": "sweetspot.training.losses.SFTLoss"},
               {"_target_": "sweetspot.training.losses.IPOLoss", "beta": 0.5}]
COMBO_WEIGHTS = [1.0, 0.3, 2.0]

CASES = {  # name: (loss, closed form of pair i)
    "dpo": (L.DPOLoss(beta=0.3), dpo_closed(0.3)),
    "cdpo": (L.CDPOLoss(beta=0.3, label_smoothing=0.2), cdpo_closed(0.3, 0.2)),
    "robust": (L.RobustLoss(beta=0.3, label_smoothing=0.2), robust_closed(0.3, 0.2)),
    "hinge": (L.HingeLoss(beta=0.3), hinge_closed(0.3)),
    "ipo": (L.IPOLoss(beta=0.3), ipo_closed(0.3)),
    "sft": (L.SFTLoss(), nll),
    "rpo": (L.RPOLoss(beta=0.3, alpha=0.7), rpo_closed(0.3, 0.7)),
    "rdpo": (L.RDPOLoss(beta=0.3, beta_1=2.0), rdpo_closed(0.3, 2.0)),
    "hybrid": (L.HybridLoss(beta=0.3, label_smoothing=0.1), hybrid_closed(0.3, 0.1)),
    "combo": (L.ComboLoss(losses=COMBO_PARTS, weights=COMBO_WEIGHTS),
              lambda i: dpo_closed(0.2)(i) + 0.3 * nll(i) + 2.0 * ipo_closed(0.5)(i)),
}


@pytest.mark.parametrize("name", CASES)
def test_loss_matches_closed_form(name):
    loss, closed = CASES[name]
    out = loss(make_inputs())
    expected = [closed(i) for i in range(B)]
    assert out.per_pair.tolist() == pytest.approx(expected, rel=1e-12)
    assert out.loss.item() == pytest.approx(sum(expected) / B, rel=1e-12)


# With policy == reference every log-ratio is 0; the value of each loss there, in closed form.
AT_REFERENCE = {
    "dpo": lambda i: math.log(2),
    "cdpo": lambda i: math.log(2),
    "robust": lambda i: math.log(2),  # ((1 - e) ln 2 - e ln 2) / (1 - 2e)
    "hinge": lambda i: 1.0,
    "ipo": lambda i: 1 / (4 * 0.3**2),
    "sft": nll,
    "rpo": lambda i: math.log(2) + 0.7 * nll(i),
    "rdpo": lambda i: math.log1p(math.exp(0.3 * (SC[i] - SR[i]) / 2.0)),
    "hybrid": lambda i: nll(i) if ROUTE[i] else math.log(2),
    "combo": lambda i: math.log(2) + 0.3 * nll(i) + 2.0 / (4 * 0.5**2),
}


@pytest.mark.parametrize("name", CASES)
def test_value_when_policy_equals_reference(name):
    loss, _ = CASES[name]
    out = loss(make_inputs(rc=PC, rr=PR))
    assert out.per_pair.tolist() == pytest.approx([AT_REFERENCE[name](i) for i in range(B)],
                                                  rel=1e-12)
    assert out.metrics["rewards/margin"].item() == 0.0
    assert out.metrics["kl_proxy"].item() == 0.0


def test_rdpo_without_rating_gap_is_dpo():
    inputs = make_inputs()
    inputs.rejected_reward = inputs.chosen_reward.clone()
    rdpo = L.RDPOLoss(beta=0.3, beta_1=0.01)(inputs).per_pair
    assert torch.allclose(rdpo, L.DPOLoss(beta=0.3)(inputs).per_pair, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", CASES)
def test_weight_multiplies_per_pair(name):
    loss, _ = CASES[name]
    weight = [2.0, 0.0, 0.5]
    plain, weighted = loss(make_inputs()), loss(make_inputs(weight=weight))
    assert torch.equal(plain.per_pair, weighted.per_pair)
    expected = sum(w * p for w, p in zip(weight, plain.per_pair.tolist(), strict=True)) / B
    assert weighted.loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_gradients_flow_to_the_policy(name):
    loss, _ = CASES[name]
    inputs = make_inputs(requires_grad=True)
    loss(inputs).loss.backward()
    grad = inputs.policy_chosen_logps.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    if name != "sft":  # SFT ignores the rejected response
        assert inputs.policy_rejected_logps.grad.abs().sum() > 0


def test_dpo_gradient_matches_closed_form():
    beta = 0.3
    inputs = make_inputs(requires_grad=True)
    L.DPOLoss(beta=beta)(inputs).loss.backward()
    # d/dpc of -logsig(beta D) / B is -beta * sigmoid(-beta D) / B
    expected = [-beta / (1 + math.exp(beta * margin(i))) / B for i in range(B)]
    assert inputs.policy_chosen_logps.grad.tolist() == pytest.approx(expected, rel=1e-12)
    assert inputs.policy_rejected_logps.grad.tolist() == pytest.approx([-g for g in expected],
                                                                        rel=1e-12)


def test_hybrid_routes_each_pair():
    inputs = make_inputs(route=[True, True, True])
    assert torch.equal(L.HybridLoss()(inputs).per_pair, L.SFTLoss()(inputs).per_pair)
    inputs = make_inputs(route=[False, False, False])
    hybrid = L.HybridLoss(beta=0.05, label_smoothing=0.2)(inputs).per_pair
    assert torch.equal(hybrid, L.CDPOLoss(beta=0.05, label_smoothing=0.2)(inputs).per_pair)
    out = L.HybridLoss(beta=0.3)(make_inputs())
    assert out.metrics["route/sft_fraction"].item() == pytest.approx(1 / 3)
    assert out.metrics["loss/sft"].item() == pytest.approx(nll(1))
    expected_dpo = (cdpo_closed(0.3, 0.1)(0) + cdpo_closed(0.3, 0.1)(2)) / 2
    assert out.metrics["loss/dpo"].item() == pytest.approx(expected_dpo)


def test_combo_sums_its_parts_and_prefixes_metrics():
    combo, _ = CASES["combo"]
    inputs = make_inputs()
    out = combo(inputs)
    parts = [L.DPOLoss(beta=0.2)(inputs), L.SFTLoss()(inputs), L.IPOLoss(beta=0.5)(inputs)]
    expected = sum(w * p.per_pair for w, p in zip(COMBO_WEIGHTS, parts, strict=True))
    assert torch.allclose(out.per_pair, expected, rtol=1e-14, atol=0)
    assert combo.beta == 0.2  # the first part's
    assert out.metrics["1_sft/loss"].item() == pytest.approx(parts[1].loss.item())
    assert out.metrics["2_ipo/rewards/chosen"].item() == pytest.approx(
        parts[2].metrics["rewards/chosen"].item())


def test_common_metrics():
    beta = 0.3
    out = L.DPOLoss(beta=beta)(make_inputs())
    chosen = [beta * (PC[i] - RC[i]) for i in range(B)]
    rejected = [beta * (PR[i] - RR[i]) for i in range(B)]
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["rewards/chosen"] == pytest.approx(sum(chosen) / B)
    assert m["rewards/rejected"] == pytest.approx(sum(rejected) / B)
    assert m["rewards/margin"] == pytest.approx((sum(chosen) - sum(rejected)) / B)
    assert m["rewards/accuracy"] == pytest.approx(
        sum(c > r for c, r in zip(chosen, rejected, strict=True)) / B)
    assert m["logps/chosen"] == pytest.approx(sum(PC) / B)
    assert m["logps/rejected"] == pytest.approx(sum(PR) / B)
    assert m["kl_proxy"] == pytest.approx(sum(PC[i] - RC[i] for i in range(B)) / B)
    assert all(not v.requires_grad and v.dim() == 0 for v in out.metrics.values())


def test_empty_completion_gives_a_finite_loss():
    inputs = make_inputs()
    inputs.chosen_lengths = torch.zeros(B, dtype=torch.float64)
    for name, (loss, _) in CASES.items():
        assert torch.isfinite(loss(inputs).loss), name


@pytest.mark.parametrize("make, field", [
    (lambda: L.DPOLoss(beta=0.0), "beta"),
    (lambda: L.IPOLoss(beta=-1.0), "beta"),
    (lambda: L.CDPOLoss(label_smoothing=0.5), "label_smoothing"),
    (lambda: L.RobustLoss(label_smoothing=-0.1), "label_smoothing"),
    (lambda: L.HybridLoss(label_smoothing=0.7), "label_smoothing"),
    (lambda: L.RPOLoss(alpha=-1.0), "alpha"),
    (lambda: L.RDPOLoss(beta_1=0.0), "beta_1"),
    (lambda: L.ComboLoss(weights=[1.0]), "weights"),
    (lambda: L.ComboLoss(weights=[1.0, -1.0]), "weights[1]"),
    (lambda: L.ComboLoss(losses=[], weights=[]), "losses"),
    (lambda: L.ComboLoss(losses=[{"_target_": "sweetspot.training.losses.DPOLoss",
                                  "beta": -1.0}], weights=[1.0]), "losses[0].beta"),
    (lambda: L.ComboLoss(losses=[{"_target_": "collections.OrderedDict"}], weights=[1.0]),
     "losses[0]"),
])
def test_range_checks(make, field):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.field == field


CLASSES = {"dpo": L.DPOLoss, "cdpo": L.CDPOLoss, "robust": L.RobustLoss, "hinge": L.HingeLoss,
           "ipo": L.IPOLoss, "sft": L.SFTLoss, "rpo": L.RPOLoss, "rdpo": L.RDPOLoss,
           "hybrid": L.HybridLoss, "combo": L.ComboLoss}


def test_every_option_has_a_yaml():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(CLASSES)


@pytest.mark.parametrize("name", CLASSES)
def test_yaml_is_the_dataclass_with_its_defaults(name, make_cfg):
    """loss=<name> composed over its schema (as the pipeline composes it) names its class and
    holds exactly the class's fields, each at the dataclass default; it builds and runs."""
    node = make_cfg(f"loss={name}").loss
    cls = CLASSES[name]
    assert node._target_ == f"{cls.__module__}.{cls.__qualname__}"
    fields = OmegaConf.masked_copy(node, [k for k in node if k != "_target_"])
    assert set(fields) == {f.name for f in dataclasses.fields(cls)}
    merged = OmegaConf.merge(OmegaConf.structured(cls), fields)  # types check here
    assert merged == OmegaConf.structured(cls)  # the composed node holds the dataclass defaults
    loss = build_node(node, "loss")
    assert type(loss) is cls and isinstance(loss.beta, float)
    out = loss(make_inputs())
    assert torch.isfinite(out.loss)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
            "logps/chosen", "logps/rejected", "kl_proxy"} <= set(out.metrics)


def test_combo_from_yaml_recursive_or_not(make_cfg):
    """The composed loss=combo builds the same parts whether Hydra instantiates its nested
    losses (recursive), leaves them as nodes for ComboLoss (flat), or build_node builds it."""
    node = make_cfg("loss=combo").loss
    recursive, flat = instantiate(node), instantiate(node, _recursive_=False)
    built = build_node(node, "loss")
    inputs = make_inputs()
    for combo in (recursive, flat, built):
        assert [type(p) for p in combo.parts] == [L.DPOLoss, L.SFTLoss]
    assert torch.equal(recursive(inputs).per_pair, flat(inputs).per_pair)
    assert torch.equal(recursive(inputs).per_pair, built(inputs).per_pair)
    assert torch.allclose(recursive(inputs).per_pair,
                          L.DPOLoss()(inputs).per_pair + L.SFTLoss()(inputs).per_pair)
    # a bad nested value is refused by validation, naming the nested field
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("loss=combo", "loss.losses.0.beta=-1.0"))
    assert info.value.field == "loss.losses[0].beta"
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("loss=combo", "loss.weights=[1.0]"))
    assert info.value.field == "loss.weights"
