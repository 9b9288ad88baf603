"""Log-probabilities of generated tokens, as OpenAI-style APIs report them.

They come from the model's own distribution, the log-softmax of the raw logits, before temperature,
penalties, bias and output constraints change what is sampled (vLLM's default): a caller reads how sure
the model was, not how sure the sampler was made to be. A request with speculative drafts owns one row per
token it may accept, so every accepted token has its row.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class TokenLogprob(NamedTuple):
    logprob: float  # of the token generated
    top: list[tuple[int, float]]  # the most likely tokens at that position, best first


def raw_logprobs(logits: torch.Tensor, seqs: list) -> dict[int, torch.Tensor]:
    """Index in ``seqs`` -> log-softmax of that request's rows, for the requests that asked for logprobs.

    Call before sampling: the sampler penalises and masks ``logits`` in place."""
    out, row = {}, 0
    for i, seq in enumerate(seqs):
        n = 1 + len(seq.draft_token_ids)
        if seq.params.logprobs is not None:
            out[i] = torch.log_softmax(logits[row:row + n].float(), dim=-1)
        row += n
    return out


def token_logprobs(rows: torch.Tensor, tokens: list[int], num_top: int) -> list[TokenLogprob]:
    """The entries for ``tokens``, the i-th read from ``rows[i]``."""
    rows = rows[:len(tokens)]
    chosen = rows.gather(1, torch.tensor(tokens, dtype=torch.long, device=rows.device).unsqueeze(1)).squeeze(1).tolist()
    if num_top:
        values, ids = rows.topk(min(num_top, rows.shape[1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [[] for _ in tokens]
    return [TokenLogprob(lp, top) for lp, top in zip(chosen, tops)]
