"""Shared fixtures for engine tests: tiny random checkpoints, written once per session per (arch, overrides)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine_backend.testing import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir(arch="llama", seed=0, **overrides) -> Path`` of a ready checkpoint.

    Directories are cached for the whole session, keyed by all arguments, so tests that ask for the same model
    share one copy. Treat them as read-only; copy one (``shutil.copytree``) before damaging it.
    """
    cache: dict[str, Path] = {}

    def make(arch: str = "llama", seed: int = 0, **overrides) -> Path:
        key = json.dumps([arch, seed, overrides], sort_keys=True, default=str)
        if key not in cache:
            path = tmp_path_factory.mktemp(f"tiny_{arch}")
            cache[key] = make_tiny_model(path, arch=arch, seed=seed, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> str:
    """The tiny Llama checkpoint the engine tests run on (a module may define its own)."""
    return str(tiny_model_dir("llama"))


@pytest.fixture(scope="module")
def aengine(model_dir):
    """An ``AsyncLLMEngine`` on ``model_dir``, shared by the module's tests and shut down after them."""
    from engine_backend import LLMEngine
    from engine_backend.async_engine import AsyncLLMEngine

    with AsyncLLMEngine(LLMEngine(model=model_dir)) as aengine:
        yield aengine


@pytest.fixture(scope="module")
def server(aengine, request):
    """Our OpenAI-compatible server over ``aengine`` on a free loopback port; its API key is the module's ``KEY``."""
    from engine_backend.server import ServerThread, create_app

    with ServerThread(create_app(aengine, request.module.KEY, aengine.model_name)) as srv:
        yield srv
