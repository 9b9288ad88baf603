"""Building blocks shared by every architecture: RMSNorm, rotary embedding, gated MLP.

All of them work on flattened tokens (``[N, ...]``, no batch dimension), so one forward pass can carry tokens of
many sequences. Numerics follow transformers (norms in float32, rope tables in float32 cast to the model dtype) so
the engine agrees with it token for token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RopeConfig, llama3_inv_freq_scale


class RMSNorm(nn.Module):
    """RMSNorm over the last dim. ``gemma=True``: weight stored as an offset from 1 and applied in float32."""

    def __init__(self, dim: int, eps: float, gemma: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.gemma = gemma
        self.weight = nn.Parameter(torch.zeros(dim) if gemma else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gemma:
            return (h * (1.0 + self.weight.float())).to(x.dtype)
        # Llama casts back to the input dtype before the weight multiply.
        return self.weight * h.to(x.dtype)


_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


def activation(name: str):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(_ACTIVATIONS)}") from None


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) — the MLP of every supported architecture."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies (float32, on CPU whatever the ambient default device, e.g. ``meta`` while loading)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (rope.theta ** exponents)
    if rope.rope_type == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.rope_type == "llama3":
        inv_freq = llama3_inv_freq_scale(rope, inv_freq)
    return inv_freq


class Rotary:
    """cos/sin for one rope kind (rope parameters x head_dim), computed from positions.

    Computing ``positions * inv_freq`` directly costs a few tiny element-wise kernels per step, needs no table of
    ``max_position_embeddings`` rows (130k for Gemma 3), never syncs the device, and gives bit-identical values
    to a precomputed table. The model does it once per kind per forward, not once per layer.
    """

    def __init__(self, rope: RopeConfig, head_dim: int) -> None:
        self.rope = rope
        self.head_dim = head_dim
        self._inv_freq = {torch.device("cpu"): rope_inv_freq(rope, head_dim)}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        t = self._inv_freq.get(device)
        if t is None:
            t = self._inv_freq[device] = self._inv_freq[torch.device("cpu")].to(device)
        return t

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq(positions.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x: [N, heads, D]`` with ``cos, sin: [N, D]`` (the half-split layout of HF checkpoints)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
