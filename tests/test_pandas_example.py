"""examples/pandas_reviews.py runs as a user runs it (a subprocess from the repository root, tiny demo model)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", [[], ["--modin"]], ids=["pandas", "modin"])
def test_pandas_reviews(extra):
    if extra:
        pytest.importorskip("modin")
    proc = subprocess.run([sys.executable, "examples/pandas_reviews.py", "--rows", "24", *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "positive reviews among those with 3+ stars" in out and "prefix hit rate" in out
    assert out.count(" -> ") == 5  # five classified rows
