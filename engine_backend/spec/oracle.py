"""An oracle proposer for benchmarks and tests, never a default path: it knows each request's greedy
continuation and proposes it with every token corrupted with probability ``1 - p``.

SmartSpec's paper sweeps acceptance rates this way: the proposer's quality becomes a dial, so the choice of
k can be checked against the best fixed k at every rate. Per draft token the acceptance is ``p`` (a right
token is always accepted under greedy verification, a corrupted one never).
"""
from __future__ import annotations

import random

from .proposers import Proposer


class OracleProposer(Proposer):
    name = "oracle"

    def __init__(self, continuations: dict[tuple[int, ...], list[int]], p: float, vocab_size: int, seed: int = 0):
        """``continuations``: prompt token ids -> the target's greedy output tokens for that prompt."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.continuations = continuations
        self.p = p
        self.vocab_size = vocab_size
        self.rng = random.Random(seed)

    def propose(self, seqs, ks):
        out = []
        for seq, k in zip(seqs, ks):
            truth = self.continuations.get(tuple(seq.token_ids[:seq.prompt_len]), [])
            at = seq.num_output_tokens
            out.append([t if self.rng.random() < self.p else (t + 1 + self.rng.randrange(self.vocab_size - 1))
                        % self.vocab_size for t in truth[at:at + k]])
        return out
