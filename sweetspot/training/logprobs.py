"""Summed log-probabilities of completion tokens: the one implementation that training, the
reference pass, the implicit scorer and evaluation's KL estimate all share.

Only the positions whose next token is scored go through the LM head, and the log-probability
is ``logit[target] - logsumexp(logits)``: no [batch, time, vocab] log-softmax is materialised,
and prompt and padding positions never reach the (vocabulary-sized) output layer. When the
scored tokens' logits would be large (``HEAD_CHUNK_ELEMENTS``), the head runs in chunks that are
recomputed in the backward pass instead of kept.

Three batch layouts (see ``data.py``): ``completion_logps`` takes the stacked one
(prompt+chosen rows, then prompt+rejected rows); ``shared_completion_logps`` the shared-prompt
one (one row per pair, prompt computed once); ``prefix_completion_logps`` the prefix one (the
prompts once, their keys and values reused by both completions). ``batch_logps`` takes any.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from sweetspot.models import CACHE_ARG, kv_cache

# Above this many logits (scored tokens x vocabulary; 2**28 fp32 = 1 GiB) the head is chunked.
HEAD_CHUNK_ELEMENTS = 1 << 28
# Attention implementations that take a custom 4D mask (bool for sdpa, additive for eager).
SHARED_PROMPT_ATTENTION = ("sdpa", "eager")


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _backbone_and_head(model: Any) -> tuple[Any, Any]:
    base = _base(model)
    return base.base_model, base.get_output_embeddings()


def _logit_transform(model: Any) -> tuple[float, float | None]:
    """(scale, softcap) that the model's own forward applies to the head's output."""
    config = _base(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(text, "logit_scale", None)
    if scale is None and getattr(text, "logits_scaling", None):
        scale = 1.0 / text.logits_scaling
    softcap = getattr(text, "final_logit_softcapping", None)
    return float(scale if scale is not None else 1.0), softcap


def _head_logps(
    head: Any, states: torch.Tensor, targets: torch.Tensor, scale: float, softcap: float | None
) -> torch.Tensor:
    logits = head(states).float()
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def token_logps(model: Any, head: Any, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target | state) for each row of ``states`` [N, H]; float32 [N]."""
    scale, softcap = _logit_transform(model)
    n, vocab = states.shape[0], head.weight.shape[0]
    if n * vocab <= HEAD_CHUNK_ELEMENTS:
        return _head_logps(head, states, targets, scale, softcap)
    step = max(1, HEAD_CHUNK_ELEMENTS // vocab)
    parts = []
    for start in range(0, n, step):
        s, t = states[start : start + step], targets[start : start + step]
        if torch.is_grad_enabled():
            parts.append(
                checkpoint(_head_logps, head, s, t, scale, softcap, use_reentrant=False)
            )
        else:
            parts.append(_head_logps(head, s, t, scale, softcap))
    return torch.cat(parts)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row is ones, then zeros."""
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def completion_logps(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Sum over each row of log p(token_t | tokens_<t) for the tokens where ``completion_mask``
    is 1. Rows are right padded. Returns float32 [batch]."""
    backbone, head = _backbone_and_head(model)
    if attention_mask is not None and is_right_padded(attention_mask):
        # Causal attention alone is exact for every real token of a right-padded row (padding
        # comes after it), and lets sdpa skip the upper triangle instead of applying a mask.
        attention_mask = None
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    scored = completion_mask[:, 1:].bool()
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(scored)
    values = token_logps(model, head, hidden[:, :-1][scored], input_ids[:, 1:][scored])
    out = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    return out.index_add(0, rows[scored], values)


def attention_implementation(model: Any) -> str:
    return str(getattr(_base(model).config, "_attn_implementation", None) or "eager")


def supports_shared_prompt(model: Any) -> bool:
    """Whether the model's attention takes the custom mask of the shared-prompt layout."""
    return attention_implementation(model) in SHARED_PROMPT_ATTENTION


def layout_cost(model: Any, batches: list[list[tuple[int, int, int]]], layout: str) -> float:
    """Forward FLOPs of the backbone over planned batches of (prompt, chosen, rejected) lengths
    in one layout: 2 x body weights per token, plus 4 x attention width per (query, key) pair
    and layer. Masked attention computes every pair; causal attention (no mask) half of them
    on a GPU, where sdpa skips the upper triangle (on the CPU it saves little). The LM head sees
    the same tokens in every layout."""
    base = _base(model)
    config = base.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    embeddings = {id(base.get_input_embeddings().weight)}
    body = sum(p.numel() for p in base.base_model.parameters() if id(p) not in embeddings)
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    width = heads * head_dim * config.num_hidden_layers
    on_gpu = next(base.parameters()).is_cuda or torch.cuda.is_available()
    causal = 0.5 if on_gpu and attention_implementation(model) != "eager" else 1.0

    def rows(n: int, queries: int, keys: int, share: float) -> float:
        return n * (2 * body * queries + 4 * width * queries * keys * share)

    total = 0.0
    for batch in batches:
        n = len(batch)
        if layout == "shared":
            t = max(p + c + r for p, c, r in batch)
            total += rows(n, t, t, 1.0)
        elif layout == "prefix":
            t_p, t_c = max(p for p, _, _ in batch), max(max(c, r) for _, c, r in batch)
            total += rows(n, t_p, t_p, causal) + rows(2 * n, t_c, t_p + t_c, 1.0)
        else:
            t = max(p + max(c, r) for p, c, r in batch)
            total += rows(2 * n, t, t, causal)
    return total


def shared_prompt_mask(
    segment: torch.Tensor, implementation: str, dtype: torch.dtype
) -> torch.Tensor:
    """[B, 1, T, T] mask of the shared-prompt layout from its segment ids [B, T].

    Query i sees key j <= i when j is a prompt token or in i's own completion; padding keys are
    hidden, and each position sees itself (so a padding row is never empty). Boolean (True =
    attend) for sdpa, additive in ``dtype`` for eager attention."""
    t = segment.shape[1]
    seg = segment.long()
    causal = torch.ones(t, t, dtype=torch.bool, device=segment.device).tril()
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = causal & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(t, dtype=torch.bool, device=segment.device)
    allowed = allowed[:, None]
    if implementation == "sdpa":
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def shared_completion_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed completion log-probs of a shared-prompt batch: float32 [2B], chosen then
    rejected (the order of ``completion_logps`` on the stacked batch of the same pairs)."""
    backbone, head = _backbone_and_head(model)
    dtype = next(backbone.parameters()).dtype
    if torch.is_autocast_enabled(batch["input_ids"].device.type):
        dtype = torch.get_autocast_dtype(batch["input_ids"].device.type)
    mask = shared_prompt_mask(batch["segment"], attention_implementation(model), dtype)
    hidden = backbone(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]
    ).last_hidden_state
    states = hidden[batch["score_row"], batch["score_src"]]
    values = token_logps(model, head, states, batch["score_target"])
    pairs = batch["input_ids"].shape[0]
    out = torch.zeros(2 * pairs, dtype=torch.float32, device=values.device)
    return out.index_add(0, batch["score_slot"], values)


def supports_prefix(model: Any) -> bool:
    """Whether the prefix layout applies: sdpa or eager attention and a plain (not sliding
    window) key-value cache."""
    config = _base(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return attention_implementation(model) in SHARED_PROMPT_ATTENTION and not (
        getattr(text, "sliding_window", None) or getattr(text, "layer_types", None)
    )


def prefix_completion_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed completion log-probs of a prefix-layout batch: float32 [2B], chosen then rejected.

    The prompts run once (causal attention; their padding comes last, so it needs no mask) and
    leave their keys and values in a cache; the cache's rows are repeated for the chosen and the
    rejected rows, and the completions run on top of it, gradients flowing back into the prompt
    through the cached keys and values."""
    backbone, head = _backbone_and_head(model)
    prompt = backbone(input_ids=batch["prompt_ids"], use_cache=True)
    cache = kv_cache(prompt)
    pairs = batch["prompt_ids"].shape[0]
    cache.batch_select_indices(torch.arange(pairs, device=batch["prompt_ids"].device).repeat(2))
    hidden = backbone(
        input_ids=batch["completion_ids"],
        attention_mask=batch["completion_attention"],
        position_ids=batch["position_ids"],
        use_cache=True,
        **{CACHE_ARG: cache},
    ).last_hidden_state
    states = torch.cat(
        [
            prompt.last_hidden_state[batch["first_row"], batch["first_col"]],
            hidden[batch["rest_row"], batch["rest_col"]],
        ]
    )
    targets = torch.cat([batch["first_target"], batch["rest_target"]])
    values = token_logps(model, head, states, targets)
    out = torch.zeros(2 * pairs, dtype=torch.float32, device=values.device)
    return out.index_add(0, torch.cat([batch["first_slot"], batch["rest_slot"]]), values)


def batch_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed completion log-probs of any layout: float32 [2B], chosen then rejected."""
    if "prompt_ids" in batch:
        return prefix_completion_logps(model, batch)
    if "segment" in batch:
        return shared_completion_logps(model, batch)
    return completion_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
