"""Turn a batch's logits into next tokens, verifying speculative tokens on the way.

Each request ready to sample owns 1 + k logits rows: the row after its last real token and one after
each of its k speculative tokens (``seq.draft_token_ids``; k is 0 without speculation). Output
constraints mask every row with the state the constraint would be in had the drafts before it been
accepted, all rows of one constraint in one call.

Greedy rows are one batched argmax; a request keeps its drafts up to the first that differs from
the argmax, then takes the argmax there (the correction, or the bonus token after k accepted ones),
so its tokens equal non-speculative greedy decoding. Rows with temperature sample one request at a
time with the request's own generator (a seeded request gives the same tokens whatever else shares
its batch) by rejection sampling: a draft token d is a point proposal, accepted with probability
p(d); on rejection the token is drawn from p with d removed and renormalised. The output is then
distributed exactly as p: P(d) = p(d), and P(x) = (1 - p(d)) p(x) / (1 - p(d)) = p(x) for x != d.
"""
from __future__ import annotations

import torch


def sample(logits: torch.Tensor, seqs: list, constraints: dict) -> list[list[int]]:
    """``logits``: [sum(1 + len(seq.draft_token_ids)), vocab] float32, each request's rows together and in
    ``seqs`` order. ``constraints`` maps request id -> its output constraint (``engine_backend.constraints``).
    Returns, per request, the tokens to append: its accepted drafts, then one sampled token."""
    if not seqs:
        return []
    firsts = []
    row = 0
    for seq in seqs:
        firsts.append(row)
        row += 1 + len(seq.draft_token_ids)
    _mask(logits, seqs, firsts, constraints)
    argmax = logits.argmax(dim=-1).tolist()
    out = []
    for seq, first in zip(seqs, firsts):
        drafts, p = seq.draft_token_ids, seq.params
        if p.temperature > 0:
            out.append(_verify_sampled(logits[first:first + len(drafts) + 1], drafts, p, seq.generator))
            continue
        tokens = []
        for j, d in enumerate(drafts):
            if argmax[first + j] != d:
                break
            tokens.append(d)
        tokens.append(argmax[first + len(tokens)])
        out.append(tokens)
    return out


def _mask(logits: torch.Tensor, seqs: list, firsts: list[int], constraints: dict) -> None:
    """Apply each constraint to its rows: row j of a request is masked in the state after its first j drafts
    (drafts are only ever tokens the constraint allows without completing, ``Speculator._trim``)."""
    groups: dict[int, tuple[object, list[int], list]] = {}
    for seq, first in zip(seqs, firsts):
        c = constraints.get(seq.request_id)
        if c is None:
            continue
        _, rows, states = groups.setdefault(id(c), (c, [], []))
        state = seq.constraint_node
        for j in range(len(seq.draft_token_ids) + 1):
            rows.append(first + j)
            states.append(state)
            if j < len(seq.draft_token_ids):
                state, _ = c.step(state, seq.draft_token_ids[j])
    for c, rows, states in groups.values():
        if len(rows) == logits.shape[0]:  # the whole batch (one query's rows): mask in place, no gather and scatter
            c.mask_rows(logits, states)
            continue
        sub = logits[rows]
        c.mask_rows(sub, states)
        logits[rows] = sub


def _verify_sampled(rows: torch.Tensor, drafts: list[int], p, generator) -> list[int]:
    """Rejection sampling over one request's rows ([1 + len(drafts), vocab])."""
    tokens = []
    for j, d in enumerate(drafts):
        probs = probabilities(rows[j], p.temperature, p.top_k, p.top_p)
        if float(torch.rand((), generator=generator)) < float(probs[d]):
            tokens.append(d)
            continue
        probs[d] = 0.0  # the residual of a point proposal: p without d (multinomial renormalises)
        tokens.append(int(torch.multinomial(probs, 1, generator=generator).item()))
        return tokens
    probs = probabilities(rows[len(drafts)], p.temperature, p.top_k, p.top_p)
    tokens.append(int(torch.multinomial(probs, 1, generator=generator).item()))
    return tokens


def probabilities(row: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The distribution a row samples from: temperature, then top-k, then top-p."""
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
    return probs
