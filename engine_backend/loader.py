"""Load a local Hugging Face-format checkpoint (config.json + safetensors) into a ``CausalLM``.

Every way a directory can be unusable raises ``CheckpointError`` naming the file at fault, so a user who points
the engine at the wrong folder learns what is missing instead of reading a stack trace.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import SUPPORTED_ARCHS, CheckpointError, ModelConfig
from .models import CausalLM, build_model

__all__ = ["CheckpointError", "load_model", "read_config", "resolve_dtype", "weight_files"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# Checkpoint tensors that are not parameters of ours (rope caches, vision towers of multimodal Gemma 3).
_IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device, config: ModelConfig) -> torch.dtype:
    """None: float32 on CPU, bfloat16 elsewhere. "auto": the checkpoint's dtype (float32 if it names none)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    name = str(dtype).lower().removeprefix("torch.")
    if name == "auto":
        name = str(config.torch_dtype or "float32").lower().removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of: auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def read_config(path: str | Path) -> ModelConfig:
    """``ModelConfig`` of a checkpoint directory, with ``CheckpointError`` for a missing or bad config.json."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file} is missing: not a Hugging Face checkpoint directory")
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_file} must hold a JSON object")
    if raw.get("model_type") not in SUPPORTED_ARCHS:
        raise CheckpointError(f"{cfg_file}: unsupported model_type {raw.get('model_type')!r}; "
                              f"supported: {', '.join(SUPPORTED_ARCHS)}")
    try:
        return ModelConfig.from_dir(path)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: those named by ``model.safetensors.index.json``, else all."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e!r}") from None
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f.name} is listed in {index.name} but missing from {path}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weight file in {path} (expected model.safetensors)")
    return files


def _checkpoint_name(name: str) -> str | None:
    """Map a tensor name of the checkpoint to ours (None: not a parameter we hold)."""
    if name.startswith(_IGNORED_PREFIXES) or name.endswith("rotary_emb.inv_freq"):
        return None
    # Multimodal Gemma 3 keeps the text model under language_model (v4: "language_model.model.", v5:
    # "model.language_model.").
    for old, new in (("language_model.model.", "model."), ("model.language_model.", "model."),
                     ("language_model.lm_head.", "lm_head.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def load_model(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
               require_tokenizer: bool = True) -> CausalLM:
    """Build the model a checkpoint directory describes and copy its weights in; returns it in eval mode."""
    from safetensors import safe_open

    path = Path(path)
    config = read_config(path)
    if require_tokenizer and not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path / 'tokenizer.json'} is missing: the engine needs the tokenizer")
    files = weight_files(path)
    torch_dtype = resolve_dtype(dtype, device, config)
    device = torch.device(device)

    # Build on the meta device (no random init of millions of weights), then allocate for real.
    with torch.device("meta"):
        model = build_model(config)
    model = model.to(dtype=torch_dtype).to_empty(device=device)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for f in files:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as st:
                for ck_name in st.keys():
                    name = _checkpoint_name(ck_name)
                    if name is None:
                        continue
                    if name not in params:
                        # A weight of the language model we have no slot for means config.json describes a
                        # different model (e.g. biases it does not declare): refuse rather than silently drop it.
                        if name.startswith(("model.", "lm_head.")):
                            raise CheckpointError(f"{f.name}: unexpected tensor {ck_name} for a {config.arch} model "
                                                  f"as config.json describes it")
                        continue
                    tensor = st.get_tensor(ck_name)
                    if tuple(tensor.shape) != tuple(params[name].shape):
                        raise CheckpointError(f"{f.name}: tensor {ck_name} has shape {tuple(tensor.shape)}, "
                                              f"expected {tuple(params[name].shape)} from config.json")
                    with torch.no_grad():
                        params[name].copy_(tensor)
                    loaded.add(name)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise CheckpointError(f"{f.name} could not be read as safetensors: {e}") from None
    if config.tie_word_embeddings and "model.embed_tokens.weight" in loaded:
        loaded.add("lm_head.weight")
    missing = [n for n in params if n not in loaded]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        raise CheckpointError(f"{', '.join(p.name for p in files)} lack {len(missing)} tensors: {shown}")
    return model.eval()
