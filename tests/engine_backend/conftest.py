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
