"""Where generation runs: the embedded engine, any OpenAI-compatible server, or vLLM.

``make_backend("embedded", model=DIR)``, ``make_backend("openai", base_url=URL, api_key=KEY)``,
``make_backend("vllm", model=DIR)``. Each keeps the batch order and returns one
``GenerationResult`` per request; a request that fails alone is an error result, not
an exception. Modules are imported on demand so that choosing a backend never pulls
in another's heavy dependencies.
"""
from __future__ import annotations

from typing import Any

from engine_backend.backends.base import Backend, BackendError, GenerationRequest, GenerationResult

KINDS = ("embedded", "openai", "vllm")


def make_backend(kind: str = "embedded", **kwargs: Any) -> Backend:
    if kind == "embedded":
        from engine_backend.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(**kwargs)
    if kind == "openai":
        from engine_backend.backends.openai_http import OpenAIBackend

        return OpenAIBackend(**kwargs)
    if kind == "vllm":
        from engine_backend.backends.vllm_offline import VLLMBackend

        return VLLMBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}: choose one of {', '.join(KINDS)}")


def __getattr__(name: str) -> Any:  # lazy class exports: EmbeddedBackend, OpenAIBackend, VLLMBackend
    modules = {"EmbeddedBackend": "embedded", "OpenAIBackend": "openai_http", "VLLMBackend": "vllm_offline"}
    if name in modules:
        import importlib

        return getattr(importlib.import_module(f"engine_backend.backends.{modules[name]}"), name)
    raise AttributeError(name)


__all__ = ["Backend", "BackendError", "GenerationRequest", "GenerationResult", "make_backend", "KINDS",
           "EmbeddedBackend", "OpenAIBackend", "VLLMBackend"]
