"""Turn the last-position logits of a batch into next tokens.

Greedy rows are one batched argmax. Rows with temperature sample one at a time with
the request's own generator, so a seeded request gives the same tokens whatever else
shares its batch.
"""
from __future__ import annotations

import torch


def sample(logits: torch.Tensor, seqs: list, tries: dict) -> list[int]:
    """``logits``: [len(seqs), vocab] float32. ``tries`` maps request id -> ChoiceTrie."""
    if not seqs:
        return []
    for i, seq in enumerate(seqs):
        trie = tries.get(seq.request_id)
        if trie is not None:
            trie.mask_row(logits[i], seq.constraint_node)
    tokens = logits.argmax(dim=-1).tolist()
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.temperature > 0:
            tokens[i] = _sample_row(logits[i], p.temperature, p.top_k, p.top_p, seq.generator)
    return tokens


def _sample_row(row: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> int:
    row = row / temperature
    if 0 < top_k < row.numel():
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest set whose mass reaches top_p (the token crossing it included)
        drop = cumulative - sorted_probs >= top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
