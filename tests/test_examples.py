"""The examples run as a user runs them (subprocesses from the repository root, tiny demo model)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_example(name: str, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, f"examples/{name}.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_duckdb_reviews():
    out = run_example("duckdb_reviews")
    assert "positive reviews" in out and "stage 0 [filter]" in out and "rewritten SQL" in out


def test_skystore_pipeline():
    out = run_example("skystore_pipeline")
    assert "copies: ['aws-us-east-1']" in out  # written in one region ...
    assert "copies now: ['aws-us-east-1', 'aws-eu-west-1']" in out  # ... replicated by the read from the other
    assert "written back" in out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java")
def test_spark_reviews():
    pytest.importorskip("pyspark")
    out = run_example("spark_reviews")
    assert "positive reviews with 3+ stars summarised" in out and "prefix hit rate" in out


def test_duckdb_join():
    out = run_example("duckdb_join")
    assert "pairwise:" in out and "multi-label:" in out and "stage 0 [filter]" in out
