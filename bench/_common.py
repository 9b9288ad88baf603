"""Small helpers shared by the benchmarks: progress to stderr, JSON and PNG under the results folder, a plain table.

Every benchmark prints its JSON to stdout, writes the same JSON to ``OUT/NAME.json`` and draws ``OUT/NAME.png``
(OUT defaults to ``bench/results``, which git ignores). Run the scripts from the repository root.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "bench/results"
# The benchmarks' "few tens of millions of parameters" checkpoint: a random Llama of about 24M.
LLAMA_24M = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                 intermediate_size=1408, max_position_embeddings=2048)
_T0 = time.perf_counter()


def log(*parts) -> None:
    """Progress line on stderr, stamped with seconds since the script started."""
    print(f"[{time.perf_counter() - _T0:7.1f}s]", *parts, file=sys.stderr, flush=True)


def checkpoint_dir(name: str) -> Path:
    """Where a benchmark keeps a generated checkpoint between runs: ``bench/results/checkpoints/NAME``
    (git-ignored; ``LLM_SQL_BENCH_CACHE`` moves it). The folder itself is not created."""
    root = Path(os.environ.get("LLM_SQL_BENCH_CACHE") or REPO / DEFAULT_OUT / "checkpoints")
    root.mkdir(parents=True, exist_ok=True)
    return root / name


def timed_generate(engine, prompts: list, params) -> tuple[list, float, dict, dict]:
    """Warm ``engine`` up on two prompts (not timed), empty its prefix cache, then time ``generate(prompts,
    params)``. Returns (outputs, seconds, stats before, stats after)."""
    engine.generate(prompts[:2], type(params)(max_tokens=2))
    engine.reset_prefix_cache()
    before = engine.stats()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    return outs, time.perf_counter() - t0, before, engine.stats()


def write_json(data: dict, out: str | Path = DEFAULT_OUT, name: str = "results", echo: bool = True) -> Path:
    """Write ``data`` to ``OUT/NAME.json`` (and print it to stdout when ``echo``); return the path."""
    text = json.dumps(data, indent=2, default=str)
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    if echo:
        print(text, flush=True)
    return path


def format_table(headers: list[str], rows: list) -> str:
    """A plain, aligned text table; each row a list (in header order) or a dict keyed by header."""
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    table = [[str(h) for h in headers]]
    table += [[cell(r.get(h)) for h in headers] if isinstance(r, dict) else [cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(headers: list[str], rows: list, title: str | None = None, file=None) -> None:
    file = file or sys.stdout
    if title:
        print(f"\n{title}", file=file)
    print(format_table(headers, rows), file=file, flush=True)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed). Import it late: it costs memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, name: str, out: str | Path = DEFAULT_OUT) -> Path:
    """Save ``fig`` to ``OUT/NAME.png``, close it, return the path."""
    path = Path(out) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def save_bar_chart(groups: dict[str, dict[str, float]], ylabel: str, title: str, out: str | Path = DEFAULT_OUT,
                   name: str = "results") -> Path:
    """Grouped bars: one group per outer key, one bar per inner key (same inner keys in every group)."""
    plt = pyplot()
    series = list(dict.fromkeys(k for g in groups.values() for k in g))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) * max(1, len(series)) / 2 + 2), 4))
    for i, s in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        bars = ax.bar(xs, [g.get(s, 0) for g in groups.values()], width, label=s)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(series))
    return save_png(fig, name, out)


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 2)


def start_serve(model: Path, key: str, *serve_args: str, stderr=subprocess.DEVNULL,
                timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """``llm-sql serve --model MODEL`` (plus ``serve_args``) on a free loopback port, its stderr to ``stderr``; the
    key goes in the environment, not on the command line where ps shows it. Returns the child and its URL once
    /health answers."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("llm-sql", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "llm_sql.cli"]
    cmd += ["serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *serve_args]
    env = dict(os.environ, LLM_SQL_API_KEY=key,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                             cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if child.poll() is not None:
            where = f": see {stderr.name}" if hasattr(stderr, "name") else ""
            raise RuntimeError(f"llm-sql serve exited with {child.returncode}{where}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return child, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            child.kill()
            raise RuntimeError(f"llm-sql serve did not answer /health within {timeout:.0f} s")
        time.sleep(0.3)


def stop_serve(child: subprocess.Popen) -> None:
    child.terminate()
    try:
        child.wait(30)
    except subprocess.TimeoutExpired:
        child.kill()
