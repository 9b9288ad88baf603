"""The decoder-only causal LM behind every supported architecture.

Llama, Qwen2/3, Mistral, Gemma 2/3 and our ``llmsql_hetero`` differ only in switches held by ``ModelConfig``
(biases, q/k norms, Gemma's sandwich norms and scaled embeddings, softcaps, per-layer-type rope and geometry),
so one set of modules covers them. Parameter names match the Hugging Face checkpoints exactly, so loading is a
plain copy by name.

Attention itself is delegated: each layer projects q/k/v, applies q/k norms and rope, then calls
``attn(layer_idx, q, k, v, scale, softcap)``. The callable owns masks, sliding windows and the KV cache.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..config import ModelConfig
from .layers import GatedMLP, RMSNorm, Rotary, apply_rope


class AttentionFn(Protocol):
    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 softcap: float | None) -> torch.Tensor:
        """q: [N, H, D], k/v: [N, KV, D] (rope applied) -> [N, H, D]."""


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads(layer_idx)
        self.head_dim = config.head_dim(layer_idx)
        self.scale = config.attn_scale(layer_idx)
        self.softcap = config.attn_softcap
        hidden, q_size, kv_size = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, q_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, hidden, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, gemma=config.gemma_norms)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, gemma=config.gemma_norms)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attn(self.layer_idx, q, k, v, self.scale, self.softcap)
        return self.o_proj(out.reshape(n, self.num_heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        eps, gemma = config.rms_norm_eps, config.gemma_norms
        self.gemma = gemma
        self.self_attn = Attention(config, layer_idx)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias)
        self.input_layernorm = RMSNorm(config.hidden_size, eps, gemma)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, gemma)
        if gemma:  # Gemma normalises both before and after each block ("sandwich").
            self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps, gemma)
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps, gemma)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, attn)
        if self.gemma:
            x = x + self.post_attention_layernorm(h)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """The ``model.`` prefix of HF checkpoints: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # Weights come from the checkpoint: pass an empty one so no random init runs (normal_ on the
        # meta device would drag in torch._dynamo, ~80 MB and a second of start-up).
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.gemma_norms)


class CausalLM(nn.Module):
    """``forward(input_ids[N], positions[N], attn) -> hidden[N, hidden_size]``; ``compute_logits`` -> float32."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # One Rotary per distinct (rope params, head_dim); layers point at theirs by index.
        kinds: list[tuple] = []
        self._layer_rope: list[int] = []
        for i in range(config.num_layers):
            key = (config.rope(i), config.head_dim(i))
            if key not in kinds:
                kinds.append(key)
            self._layer_rope.append(kinds.index(key))
        self.rotaries = [Rotary(rope, dim) for rope, dim in kinds]
        self._embed_scale: dict[torch.dtype, float] = {}

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        if self.config.gemma_norms:
            # Gemma multiplies by sqrt(hidden) rounded to the model dtype (55.4256 becomes 55.5 in bf16).
            scale = self._embed_scale.get(x.dtype)
            if scale is None:
                scale = self._embed_scale[x.dtype] = float(torch.tensor(self.config.hidden_size ** 0.5).to(x.dtype))
            x = x * scale
        return x

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        x = self.embed(input_ids)
        tables = [r.cos_sin(positions, x.dtype) for r in self.rotaries]
        for layer, kind in zip(self.model.layers, self._layer_rope):
            cos, sin = tables[kind]
            x = layer(x, cos, sin, attn)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


def build_model(config: ModelConfig) -> CausalLM:
    """An uninitialised-weights model (use ``loader.load_model`` to get a loaded one)."""
    return CausalLM(config)
