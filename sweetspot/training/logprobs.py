"""Summed log-probabilities of completion tokens: the one implementation that training, the
reference pass, the implicit scorer and evaluation's KL estimate all share.

Only the positions whose next token is scored go through the LM head, and the log-probability
is ``logit[target] - logsumexp(logits)``: no [batch, time, vocab] log-softmax is materialised,
and prompt and padding positions never reach the (vocabulary-sized) output layer.
"""

from __future__ import annotations

from typing import Any

import torch


def _backbone_and_head(model: Any) -> tuple[Any, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model, base.get_output_embeddings()


def completion_logps(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Sum over each row of log p(token_t | tokens_<t) for the tokens where ``completion_mask``
    is 1. Rows are right padded. Returns float32 [batch]."""
    backbone, head = _backbone_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    scored = completion_mask[:, 1:].bool()
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(scored)
    states = hidden[:, :-1][scored]
    targets = input_ids[:, 1:][scored]
    logits = head(states).float()
    token_logps = logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    out = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    return out.index_add(0, rows[scored], token_logps)
