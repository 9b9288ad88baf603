"""The ``llm-sql`` command line, run as a real subprocess where it matters."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llm_sql.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LLM_SQL_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "llm_sql.cli", *args]


@pytest.mark.parametrize("argv", [["serve", "--model", "/no/such/dir"], ["demo", "--model", "/no/such/dir"]])
def test_missing_model_dir_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model directory not found: /no/such/dir" in err
    assert "Traceback" not in err


def test_serve_options_parse():
    args = build_parser().parse_args(["serve", "--model", "m", "--api-key", "k", "--kv-cache-memory", "512MB",
                                      "--no-prefix-caching", "--dtype", "float32"])
    assert (args.host, args.port, args.api_key, args.device) == ("127.0.0.1", 8000, "k", "cpu")
    assert args.kv_cache_memory == "512MB" and args.no_prefix_caching and args.dtype == "float32"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("cli-model") / "tiny", arch="llama"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_subprocess_answers_with_the_generated_key(model_dir):
    port = free_port()
    proc = subprocess.Popen(cli("serve", "--model", model_dir, "--port", str(port)), cwd=REPO, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "server did not come up:\n" + "".join(lines)
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        keys = [m.group(1) for line in lines if (m := re.search(r"generated API key.*: (\S+)$", line.strip()))]
        assert len(keys) == 1, "".join(lines)
        auth = {"Authorization": f"Bearer {keys[0]}"}
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=auth).json()["data"][0]["id"] == "tiny"
        resp = httpx.post(f"{url}/v1/completions", headers=auth, timeout=60,
                          json={"prompt": ["The beer pours", "A movie"], "max_tokens": 4})
        assert resp.status_code == 200, resp.text
        assert all(c["finish_reason"] in ("stop", "length") for c in resp.json()["choices"])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not any("Traceback" in line for line in lines), "".join(lines)


def test_demo_end_to_end(tmp_path):
    env = cli_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run(cli("demo"), cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "random model answers nonsense" in proc.stderr
    assert (tmp_path / "cache" / "llm-sql" / "models" / "tiny-llama" / "config.json").is_file()
    out = proc.stdout
    for label in ("prompt tokens", "cached prompt tok.", "prefix hit rate", "generated tokens", "seconds",
                  "tokens/s"):
        assert label in out
    assert "(0 errors)" in out
    hit = float(re.search(r"prefix hit rate\s+([0-9.]+)%", out).group(1))
    assert hit > 50  # every prompt shares the long instruction
    # the comparison: the optimised run makes fewer calls and computes fewer prompt tokens than per-row evaluation
    for label in ("LLM calls", "prompt tokens computed", "generated tokens"):
        plain, optimised, ratio = _comparison_row(out, label)
        assert optimised < plain and ratio == pytest.approx(plain / optimised, abs=0.051), label
    assert "dedup sent fewer" in out  # the lower optimised hit rate comes with its reason


def _comparison_row(out: str, label: str) -> tuple[int, int, float]:
    """(unoptimised, optimised, ratio) from a row of the demo's comparison, e.g. "LLM calls  128  60  2.1x fewer"."""
    found = re.search(rf"^  {label}\s+(\d+)\s+(\d+)\s+([0-9.]+)x fewer$", out, re.M)
    assert found, f"no comparison row {label!r} in:\n{out}"
    return int(found.group(1)), int(found.group(2)), float(found.group(3))
