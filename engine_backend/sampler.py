"""Turn the last-position logits of a batch into next tokens.

Greedy rows are one batched argmax. Rows with temperature sample one at a time with
the request's own generator, so a seeded request gives the same tokens whatever else
shares its batch.
"""
from __future__ import annotations

import torch


def sample(logits: torch.Tensor, seqs: list, constraints: dict) -> list[int]:
    """``logits``: [len(seqs), vocab] float32. ``constraints`` maps request id -> its output constraint
    (``engine_backend.constraints``); each constraint masks all of its rows in one call."""
    if not seqs:
        return []
    groups: dict[int, tuple[object, list[int]]] = {}
    for i, seq in enumerate(seqs):
        c = constraints.get(seq.request_id)
        if c is not None:
            groups.setdefault(id(c), (c, []))[1].append(i)
    for c, rows in groups.values():
        states = [seqs[i].constraint_node for i in rows]
        if len(rows) == len(seqs):  # the whole batch (one query's rows): mask in place, no gather and scatter
            c.mask_rows(logits, states)
            continue
        sub = logits[rows]
        c.mask_rows(sub, states)
        logits[rows] = sub
    tokens = logits.argmax(dim=-1).tolist()
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.temperature > 0:
            tokens[i] = _sample_row(logits[i], p.temperature, p.top_k, p.top_p, seq.generator)
    return tokens


def _sample_row(row: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> int:
    # Scale the gaps to the best logit, not the logits: the distribution is the same, and with the factor capped
    # (a temperature below 1e-30 is greedy in effect) the best stays 0 and the others go to -inf, where 1 / a tiny
    # temperature would overflow float32 and give NaN probabilities.
    row = (row - row.max()) * min(1.0 / temperature, 1e30)
    if 0 < top_k < row.numel():
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest set whose mass reaches top_p (the token crossing it included)
        drop = cumulative - sorted_probs >= top_p
        drop[0] = False  # the most likely token always stays (a top_p below float32's least positive value is 0)
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
