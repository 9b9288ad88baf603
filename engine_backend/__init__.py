"""The embedded inference engine and the backends the rest of llm-sql submits through.

Names are imported lazily so that light users (SamplingParams, the HTTP client) do not
pay for loading the engine.
"""
from importlib import import_module

_EXPORTS = {
    "LLMEngine": ".engine",
    "parse_bytes": ".engine",
    "SamplingParams": ".sampling_params",
    "RequestOutput": ".sequence",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'engine_backend' has no attribute {name!r}")
