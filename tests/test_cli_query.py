"""``llm-sql query`` over a CSV file and ``llm-sql demo``, as real subprocesses."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cache: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLM_SQL_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([sys.executable, "-m", "llm_sql.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    root = tmp_path_factory.mktemp("cliq")
    model = make_tiny_model(root / "tiny", arch="llama")
    csv = root / "beers.csv"
    lines = ["name,style,abv"] + [f"Beer {i % 4},{['IPA', 'Stout', 'Lager'][i % 3]},{4 + i % 5}" for i in range(24)]
    csv.write_text("\n".join(lines) + "\n")
    return root, str(model), str(csv)


def query(files, sql: str, *extra: str) -> subprocess.CompletedProcess:
    root, model, _ = files
    return run("query", sql, "--model", model, "--no-cache", "--max-tokens", "3", *extra, cache=root / "cache")


def test_query_prints_a_table(files):
    _, _, csv = files
    proc = query(files, f"SELECT style, COUNT(*) AS n FROM '{csv}' WHERE llm_filter('Is it dark?', style) "
                        f"OR true GROUP BY style ORDER BY style", "--stats")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^style\s+n$", out, re.M) and "IPA" in out and "(3 rows)" in out
    assert "LLM calls" in out and "prefix hit rate" in out and "total seconds" in out
    assert "Traceback" not in proc.stderr


def test_query_llm_projection_and_no_optimize_agree(files):
    _, _, csv = files
    sql = f"SELECT name, llm_score('Rate it', name) AS s FROM read_csv('{csv}', all_varchar=true) ORDER BY ALL"
    opt = query(files, sql, "--stats")
    plain = query(files, sql, "--no-optimize", "--stats")
    assert opt.returncode == 0 and plain.returncode == 0, opt.stderr + plain.stderr
    table = lambda out: out.split("\n\n")[0]
    assert table(opt.stdout) == table(plain.stdout)
    calls = lambda out: int(re.search(r"LLM calls\s+(\d+)", out).group(1))
    assert calls(opt.stdout) == 4 and calls(plain.stdout) == 24  # 4 distinct names in 24 rows


def test_query_explain(files):
    _, _, csv = files
    proc = query(files, f"SELECT name FROM '{csv}' WHERE abv > 5 AND llm_filter('Is it strong?', name, style)",
                 "--explain")
    assert proc.returncode == 0, proc.stderr
    assert "stage 0 [filter]" in proc.stdout and "rewritten SQL" in proc.stdout
    assert "est. prefix hit" in proc.stdout and "fields:" in proc.stdout


def test_query_errors_are_one_line(files):
    root, _, csv = files
    proc = run("query", "SELECT 1", "--model", "/no/such/dir", cache=root / "cache")
    assert proc.returncode == 2 and "model directory not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = query(files, "SELECT * FROM no_such_table")
    assert proc.returncode == 2 and "no_such_table" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_runs_with_the_tiny_model(tmp_path):
    proc = run("demo", "--rows", "96", "--sample", "48", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert "random model answers nonsense" in proc.stderr
    out = proc.stdout
    for label in ("LLM calls", "prefix hit rate", "prompt tokens computed", "unoptimised", "rows in"):
        assert label in out
    assert int(re.search(r"LLM calls\s+(\d+)", out).group(1)) < 96  # dedup: 64 distinct reviews in 96 rows
