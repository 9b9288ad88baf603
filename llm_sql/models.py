"""Where llm-sql keeps its files, and the tiny demo checkpoint used when no model is given."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/llm-sql`` (``~/.cache/llm-sql`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "llm-sql"


def default_demo_model() -> Path:
    """A tiny random-weight Llama checkpoint, created once under the user cache dir."""
    path = cache_dir() / "models" / "tiny-llama"
    if (path / "config.json").is_file():
        return path
    from engine_backend.testing import make_tiny_model

    print(f"llm-sql: creating a tiny random-weight model in {path} (once)", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so an interrupted run never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=path.parent))
    try:
        make_tiny_model(tmp, arch="llama")
        try:
            tmp.rename(path)
        except OSError:  # another process finished first
            if not (path / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
