"""Reference attention with no cache: the oracle for tests and for debugging paged attention.

``model(ids, torch.arange(n), DenseAttention(config))`` runs one whole sequence. ``seq_lens`` allows several
sequences flattened back to back (each starting at position 0), attended block-diagonally.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import ModelConfig


class DenseAttention:
    def __init__(self, config: ModelConfig, seq_lens: Sequence[int] | None = None) -> None:
        self.config = config
        self.seq_lens = list(seq_lens) if seq_lens is not None else None
        self._masks: dict[tuple, torch.Tensor] = {}

    def mask(self, n: int, window: int | None, device: torch.device) -> torch.Tensor:
        """Bool [n, n]: query i may attend key j (causal, same sequence, within the window)."""
        key = (n, window, device)
        if key not in self._masks:
            lens = self.seq_lens if self.seq_lens is not None else [n]
            if sum(lens) != n:
                raise ValueError(f"seq_lens sum to {sum(lens)} but {n} tokens were given")
            seq = torch.repeat_interleave(torch.arange(len(lens), device=device), torch.tensor(lens, device=device))
            i = torch.arange(n, device=device)[:, None]
            j = torch.arange(n, device=device)[None, :]
            m = (seq[:, None] == seq[None, :]) & (j <= i)
            if window is not None:
                m &= (i - j) < window
            self._masks[key] = m
        return self._masks[key]

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 softcap: float | None) -> torch.Tensor:
        n, heads, _ = q.shape
        group = heads // k.shape[1]
        # float32 scores; kv head h serves query heads h*group .. (h+1)*group-1, like HF's repeat_kv.
        qf = q.float().transpose(0, 1)
        kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)
        vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
        scores = qf @ kf.transpose(1, 2) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~self.mask(n, self.config.window(layer_idx), q.device), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ vf
        return out.transpose(0, 1).to(q.dtype)
