"""One model description for every supported architecture, read from a Hugging Face ``config.json``.

Checkpoints spell the same idea in different ways (``rope_theta`` vs ``rope_parameters``, ``hidden_act`` vs
``hidden_activation``, Gemma 3 nested in a multimodal config, Qwen's ``use_sliding_window``...). ``ModelConfig``
resolves all of that once, with the same defaults transformers 5.x applies, so the model, the KV cache and the
scheduler only ever ask simple questions: ``head_dim(layer)``, ``num_kv_heads(layer)``, ``window(layer)``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FULL = "full_attention"
SLIDING = "sliding_attention"

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "gemma3", "llmsql_hetero")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# Defaults of the transformers 5.x config classes, used when a config.json leaves a field out.
_COMMON = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, head_dim=None, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
    bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False, rope_theta=10000.0,
    attention_bias=False, mlp_bias=False, sliding_window=None,
)
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(bos_token_id=1, eos_token_id=2),
    "llmsql_hetero": dict(bos_token_id=1, eos_token_id=2),
    "qwen2": dict(vocab_size=151936, intermediate_size=22016, num_key_value_heads=32, max_position_embeddings=32768,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28),
    "qwen3": dict(vocab_size=151936, intermediate_size=22016, num_key_value_heads=32, head_dim=128,
                  max_position_embeddings=32768, use_sliding_window=False, sliding_window=4096, max_window_layers=28),
    "mistral": dict(intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=131072,
                    bos_token_id=1, eos_token_id=2, sliding_window=4096),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                   max_position_embeddings=8192, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                   tie_word_embeddings=True, query_pre_attn_scalar=256, sliding_window=4096,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072, pad_token_id=0,
                        eos_token_id=1, bos_token_id=2, tie_word_embeddings=True, query_pre_attn_scalar=256,
                        sliding_window=4096, final_logit_softcapping=None, attn_logit_softcapping=None,
                        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, sliding_window_pattern=6),
}


class CheckpointError(ValueError):
    """A model directory is not a usable checkpoint; the message names the file at fault.

    Defined here (no torch import) so the tokenizer can raise it; ``engine_backend.loader`` re-exports it.
    """


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type: how to build the inverse frequencies."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], default_theta: float, max_pos: int) -> "RopeConfig":
        rope_type = d.get("rope_type") or d.get("type") or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
        if float(d.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")
        return cls(
            theta=float(d.get("rope_theta", default_theta)),
            rope_type=rope_type,
            factor=float(d.get("factor", 1.0)),
            low_freq_factor=float(d.get("low_freq_factor", 1.0)),
            high_freq_factor=float(d.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(d.get("original_max_position_embeddings") or max_pos),
        )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture-neutral description of a decoder-only model (see module docstring)."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    layer_types: tuple[str, ...]
    sliding_window: int | None
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    torch_dtype: str | None
    # Attention geometry per layer type (they differ only for llmsql_hetero).
    full_head_dim: int
    full_num_kv_heads: int
    sliding_head_dim: int
    sliding_num_kv_heads: int
    pad_token_id: int | None = None
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over each head of q and k
    gemma_norms: bool = False  # Gemma: (1 + w) RMSNorm, sandwich norms around attention and MLP, scaled embeddings
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    rope_full: RopeConfig = field(default_factory=RopeConfig)
    rope_sliding: RopeConfig = field(default_factory=RopeConfig)

    def __post_init__(self) -> None:
        for t, heads, dim in ((FULL, self.full_num_kv_heads, self.full_head_dim),
                              (SLIDING, self.sliding_num_kv_heads, self.sliding_head_dim)):
            if heads < 1 or dim < 2 or dim % 2 or self.num_heads % heads:
                raise ValueError(f"bad {t} geometry: {self.num_heads} heads, {heads} kv heads, head_dim {dim}")
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"{len(self.layer_types)} layer_types for {self.num_layers} layers")

    # ---- per-layer questions -------------------------------------------------------------------------------
    def layer_type(self, layer: int) -> str:
        return self.layer_types[layer]

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def num_kv_heads(self, layer: int) -> int:
        return self.sliding_num_kv_heads if self.is_sliding(layer) else self.full_num_kv_heads

    def head_dim(self, layer: int) -> int:
        return self.sliding_head_dim if self.is_sliding(layer) else self.full_head_dim

    def window(self, layer: int) -> int | None:
        """Tokens a query sees in a sliding layer, itself included (key j visible from i iff i - W < j <= i)."""
        return self.sliding_window if self.is_sliding(layer) else None

    def rope(self, layer: int) -> RopeConfig:
        return self.rope_sliding if self.is_sliding(layer) else self.rope_full

    def attn_scale(self, layer: int) -> float:
        """Softmax scale: Gemma uses query_pre_attn_scalar, everyone else 1/sqrt(head_dim)."""
        if self.query_pre_attn_scalar is not None:
            return float(self.query_pre_attn_scalar) ** -0.5
        return float(self.head_dim(layer)) ** -0.5

    @property
    def attn_softcap(self) -> float | None:
        return self.attn_logit_softcapping

    @property
    def has_sliding_layers(self) -> bool:
        return SLIDING in self.layer_types

    # ---- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        d = json.loads((path / "config.json").read_text())
        gen = path / "generation_config.json"
        if gen.is_file():
            try:
                g = json.loads(gen.read_text())
            except ValueError:
                g = {}
            d = dict(d, _generation_eos=g.get("eos_token_id"))
        return cls.from_hf_dict(d)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        arch = d.get("model_type")
        if arch == "gemma3":
            # Multimodal wrapper: the language model lives in text_config; token ids may sit at the top level.
            text = dict(d.get("text_config") or {})
            for k in ("eos_token_id", "bos_token_id", "pad_token_id", "_generation_eos", "torch_dtype", "dtype"):
                if k in d and k not in text:
                    text[k] = d[k]
            d, arch = text, "gemma3_text"
        if arch not in _ARCH_DEFAULTS:
            raise ValueError(f"unsupported model_type {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
        cfg = {**_COMMON, **_ARCH_DEFAULTS[arch], **d}
        if cfg.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention (embedding models) is not supported: not a causal LM")

        def get(key: str) -> Any:
            # A key written as null falls back to the default (transformers does the same for most fields).
            v = cfg.get(key)
            return v if v is not None else {**_COMMON, **_ARCH_DEFAULTS[arch]}.get(key)

        hidden, n_layers, n_heads = int(get("hidden_size")), int(get("num_hidden_layers")), int(
            get("num_attention_heads"))
        head_dim = int(get("head_dim") or hidden // n_heads)
        n_kv = int(cfg.get("num_key_value_heads") or n_heads)
        max_pos = int(get("max_position_embeddings"))
        gemma = arch in ("gemma2", "gemma3_text")

        sliding_window = cfg.get("sliding_window")  # an explicit null means "no sliding window"
        if arch in ("qwen2", "qwen3") and not cfg.get("use_sliding_window"):
            sliding_window = None
        layer_types = _layer_types(arch, cfg, n_layers, sliding_window)
        if SLIDING in layer_types and not sliding_window:
            raise ValueError("layer_types has sliding_attention layers but sliding_window is not set")
        if SLIDING not in layer_types:
            sliding_window = None
        rope_full, rope_sliding = _rope(arch, cfg, max_pos)

        act = cfg.get("hidden_activation") or cfg.get("hidden_act") if gemma else cfg.get("hidden_act")
        act = act or ("gelu_pytorch_tanh" if gemma else "silu")
        qkv_bias = True if arch == "qwen2" else bool(cfg.get("attention_bias"))
        o_bias = False if arch in ("qwen2", "mistral") else bool(cfg.get("attention_bias"))

        return cls(
            arch=arch,
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_layers=n_layers,
            num_heads=n_heads,
            max_position_embeddings=max_pos,
            layer_types=layer_types,
            sliding_window=int(sliding_window) if sliding_window else None,
            eos_token_ids=_eos_ids(cfg.get("eos_token_id"), cfg.get("_generation_eos")),
            bos_token_id=cfg.get("bos_token_id"),
            torch_dtype=cfg.get("dtype") or cfg.get("torch_dtype"),
            full_head_dim=head_dim,
            full_num_kv_heads=n_kv,
            sliding_head_dim=int(cfg.get("sliding_head_dim") or head_dim) if arch == "llmsql_hetero" else head_dim,
            sliding_num_kv_heads=(int(cfg.get("sliding_num_key_value_heads") or n_kv)
                                  if arch == "llmsql_hetero" else n_kv),
            pad_token_id=cfg.get("pad_token_id"),
            rms_norm_eps=float(get("rms_norm_eps")),
            hidden_act=act,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings")),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(cfg.get("mlp_bias")) if arch in ("llama", "llmsql_hetero") else False,
            qk_norm=arch in ("qwen3", "gemma3_text"),
            gemma_norms=gemma,
            query_pre_attn_scalar=float(get("query_pre_attn_scalar")) if gemma else None,
            # Gemma 3's attention never applies a logit softcap in transformers, whatever the config says.
            attn_logit_softcapping=_opt_float(cfg.get("attn_logit_softcapping")) if arch == "gemma2" else None,
            final_logit_softcapping=_opt_float(cfg.get("final_logit_softcapping")) if gemma else None,
            rope_full=rope_full,
            rope_sliding=rope_sliding,
        )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _eos_ids(*values: Any) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if x is not None and int(x) not in out:
                out.append(int(x))
    return tuple(out)


def _layer_types(arch: str, cfg: dict[str, Any], n_layers: int, sliding_window: Any) -> tuple[str, ...]:
    if arch == "mistral":
        # MistralConfig ignores layer_types: a sliding_window applies to every layer.
        return tuple([SLIDING if sliding_window else FULL] * n_layers)
    given = cfg.get("layer_types")
    if given:
        if len(given) < n_layers or any(t not in (FULL, SLIDING) for t in given[:n_layers]):
            raise ValueError(f"bad layer_types {given!r} for {n_layers} layers")
        return tuple(given[:n_layers])
    if arch in ("qwen2", "qwen3"):
        first_sliding = int(cfg.get("max_window_layers") or 0)
        return tuple(SLIDING if sliding_window and i >= first_sliding else FULL for i in range(n_layers))
    if arch == "gemma2":
        return tuple(SLIDING if (i + 1) % 2 else FULL for i in range(n_layers))
    if arch == "gemma3_text":
        pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
        return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(n_layers))
    return tuple([FULL] * n_layers)


def _rope(arch: str, cfg: dict[str, Any], max_pos: int) -> tuple[RopeConfig, RopeConfig]:
    """Return (full-attention rope, sliding-attention rope), accepting v5 ``rope_parameters`` (flat or nested
    by layer type) and the older ``rope_theta`` + ``rope_scaling`` (+ Gemma 3 ``rope_local_base_freq``)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    theta = float(cfg.get("rope_theta") or _ARCH_DEFAULTS.get(arch, {}).get("rope_theta") or _COMMON["rope_theta"])
    if arch == "gemma3_text":
        full = dict(params.get(FULL) or {"rope_type": "default"})
        if scaling and not params.get(FULL):
            full.update(scaling)
        local = dict(params.get(SLIDING) or {"rope_type": "default"})
        local_theta = float(cfg.get("rope_local_base_freq") or 10_000.0)
        return RopeConfig.from_dict(full, theta, max_pos), RopeConfig.from_dict(local, local_theta, max_pos)
    if FULL in params or SLIDING in params:
        full = RopeConfig.from_dict(params.get(FULL) or params.get(SLIDING), theta, max_pos)
        return full, RopeConfig.from_dict(params.get(SLIDING) or params.get(FULL), theta, max_pos)
    flat = RopeConfig.from_dict(params or scaling, theta, max_pos)
    return flat, flat


def llama3_inv_freq_scale(rope: RopeConfig, inv_freq: "Any") -> "Any":
    """Llama 3.1 frequency scaling: long wavelengths divided by ``factor``, short kept, a smooth ramp between."""
    import torch

    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)
