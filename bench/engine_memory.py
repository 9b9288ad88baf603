"""Engine peak memory: what the process holds beyond the model weights and the KV budget (must stay < 500 MB).

What it measures
  The resident set size of this process (``VmRSS`` and the high-water mark ``VmHWM`` from /proc/self/status;
  ``resource.getrusage().ru_maxrss`` is recorded too, but it survives exec and can hold the parent's peak) at four points:
    baseline    after the imports (torch, engine_backend), before any model is loaded;
    after_model when the engine's ``load_model`` returns (weights = sum of parameter nbytes);
    after_kv    when the engine's ``PagedKVStorage`` exists (KV budget = its buffer's bytes, allocated with
                ``torch.zeros`` so it is resident);
    peak        the high-water mark at the end of a realistic run: a few hundred prompts sharing a long
                instruction prefix (so the prefix cache works), short outputs, all submitted at once.
  overhead = peak RSS - baseline RSS - weights - KV budget. It is everything else the engine needs at its
  worst moment (activations, logits, attention gathers, tokenizer, loader transients, allocator slack).
  The baseline it is compared against is the fixed cost (interpreter + torch) measured in the same process,
  before the model. The script exits 1 when overhead >= the limit (500 MB by default).

  The checkpoint is written in a child process (``make_tiny_model``), so creating it does not count.
  By default: a random Llama of ~24M parameters (hidden 512, 8 layers, 8 heads, 4 kv heads, head_dim 64,
  intermediate 1408), 256 MiB of KV, 256 prompts, 8 output tokens each; ``--quick`` uses the tiny default
  checkpoint, 16 MiB of KV and 48 prompts. ``--model DIR`` measures any local checkpoint instead.

A random model answers nonsense; the memory is real. Timings are incidental (shared CPU machine).

Usage: python bench/engine_memory.py [--quick] [--out bench/results] [--model DIR] [--kv-mb 256] ...
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from _common import DEFAULT_OUT, LLAMA_24M, log, print_table, pyplot, save_png, write_json  # noqa: E402

NAME = "engine_memory"
MB = 10**6
MODEL = LLAMA_24M


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def write_checkpoint(path: Path, overrides: dict) -> None:
    """make_tiny_model in a child process: its random init and tokenizer training stay out of our RSS."""
    code = ("import json, sys; from engine_backend.testing import make_tiny_model; "
            "make_tiny_model(sys.argv[1], arch='llama', **json.loads(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(path), json.dumps(overrides)], check=True, cwd=REPO)


WORDS = ("beer hoppy malty bitter sweet smooth crisp dark pale amber foam aroma citrus pine caramel roast "
         "coffee chocolate fruity sour dry finish body light heavy carbonation bottle tap glass pour head "
         "lacing taste overall great poor average excellent flat stale fresh balanced harsh mild").split()


def make_prompts(n: int, seed: int) -> list[str]:
    """One long shared instruction, then a distinct short row per prompt (the shape llm-sql sends)."""
    instruction = (
        "You are given one beer review from a table. Classify the sentiment of the review as positive, negative "
        "or neutral, and answer with a single word. Read the appearance, aroma, palate, taste and overall "
        "remarks before you answer. A review that praises the taste but complains about the bottle is neutral. "
        "Answer with yes or no only when the question asks for it. Sentiment: positive. Sentiment: negative. "
        "Sentiment: neutral. Label: positive. Label: negative. Score the review from 1 to 5 if asked.\n")
    rng = random.Random(seed)
    return [f"{instruction}Review {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 40)))
            + "\nSentiment:" for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny checkpoint, small budget, few prompts")
    ap.add_argument("--out", default=DEFAULT_OUT, help="folder for the JSON and PNG (default %(default)s)")
    ap.add_argument("--model", default=None, help="measure this checkpoint instead of writing a random one")
    ap.add_argument("--kv-mb", type=float, default=None, help="KV budget in MiB (default 256, quick 16)")
    ap.add_argument("--prompts", type=int, default=None, help="number of prompts (default 256, quick 48)")
    ap.add_argument("--max-tokens", type=int, default=None, help="output tokens per prompt (default 8, quick 4)")
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--max-num-batched-tokens", type=int, default=1024)
    ap.add_argument("--limit-mb", type=float, default=500, help="fail when overhead reaches this (MB, 10^6 bytes)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    quick = args.quick
    kv_budget = int((args.kv_mb or (16 if quick else 256)) * 2**20)
    n_prompts = args.prompts or (48 if quick else 256)
    max_tokens = args.max_tokens or (4 if quick else 8)
    seconds: dict[str, float] = {}
    stages: dict[str, dict] = {}

    def mark(stage: str) -> None:
        stages[stage] = {**proc_status(), "ru_maxrss": maxrss()}
        log(f"{stage}: RSS {stages[stage]['VmRSS'] / MB:.1f} MB, peak {stages[stage]['VmHWM'] / MB:.1f} MB")

    mark("process_start")
    tmp = None
    model_dir = args.model
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="engine_memory_")
        model_dir = str(Path(tmp.name) / "model")
        t0 = time.perf_counter()
        write_checkpoint(Path(model_dir), {} if quick else MODEL)
        seconds["make_checkpoint"] = round(time.perf_counter() - t0, 2)

    import torch

    import engine_backend.engine as engine_mod
    from engine_backend import LLMEngine, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = make_prompts(n_prompts, args.seed)
    mark("baseline")

    # Record RSS at the two points inside the engine's constructor, without touching the engine's code.
    load_model, storage_cls = engine_mod.load_model, engine_mod.PagedKVStorage

    def load_and_mark(*a, **k):
        model = load_model(*a, **k)
        mark("after_model")
        return model

    class MarkedStorage(storage_cls):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            mark("after_kv")

    engine_mod.load_model, engine_mod.PagedKVStorage = load_and_mark, MarkedStorage
    t0 = time.perf_counter()
    try:
        engine = LLMEngine(model=model_dir, kv_cache_memory=kv_budget, max_num_seqs=args.max_num_seqs,
                           max_num_batched_tokens=args.max_num_batched_tokens)
    finally:
        engine_mod.load_model, engine_mod.PagedKVStorage = load_model, storage_cls
    seconds["engine_init"] = round(time.perf_counter() - t0, 2)
    mark("engine_ready")
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in engine.model.buffers())
    kv_bytes = engine.storage.nbytes
    n_params = sum(p.numel() for p in engine.model.parameters())
    prompt_lens = [len(engine.tokenizer.encode(p)) for p in prompts]

    log(f"run: {n_prompts} prompts ({min(prompt_lens)}-{max(prompt_lens)} tokens), {max_tokens} output tokens each")
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    for p in prompts:
        engine.add_request(p, params)
    t0 = time.perf_counter()
    steps, rss_trace, peak_running = 0, [], 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        peak_running = max(peak_running, len(engine.scheduler.running))
        rss_trace.append(proc_status()["VmRSS"])
        if steps % 50 == 0:
            log(f"  step {steps}: running {len(engine.scheduler.running)}, RSS {rss_trace[-1] / MB:.1f} MB")
    seconds["run"] = round(time.perf_counter() - t0, 2)
    mark("end_of_run")
    stats = engine.stats()

    base = stages["baseline"]["VmRSS"]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a benchmark started from a big
    # parent (pytest) would report the parent's peak as its own.
    peak = stages["end_of_run"]["VmHWM"]
    overhead = peak - base - weights - kv_bytes
    limit = int(args.limit_mb * MB)
    passed = overhead < limit
    result = {
        "benchmark": NAME,
        "quick": quick,
        "note": "random-weight model (nonsense output); memory is real, timings incidental (shared CPU).",
        "model": {"dir": model_dir if args.model else "(random llama, written for this run)",
                  "arch": engine.config.arch, "hidden_size": engine.config.hidden_size,
                  "layers": engine.config.num_layers, "parameters": n_params, "dtype": str(engine.dtype)},
        "workload": {"prompts": n_prompts, "prompt_tokens_min": min(prompt_lens), "prompt_tokens_max": max(prompt_lens),
                     "prompt_tokens_total": sum(prompt_lens), "max_tokens": max_tokens,
                     "max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
                     "torch_threads": torch.get_num_threads(), "steps": steps, "peak_running": peak_running,
                     "prefix_hit_rate": round(stats["prefix_hit_rate"], 4), "preemptions": stats["preemptions"],
                     "generated_tokens": stats["generated_tokens"]},
        "bytes": {"baseline_rss": base, "weights": weights, "model_buffers": buffers, "kv_budget": kv_bytes,
                  "kv_budget_requested": kv_budget,
                  "peak_rss": peak, "peak_vmhwm": stages["end_of_run"]["VmHWM"],
                  "peak_ru_maxrss": stages["end_of_run"]["ru_maxrss"], "max_rss_during_run": max(rss_trace),
                  "overhead": overhead, "limit": limit},
        # where the overhead sits (bytes): fixed cost of building the model beyond its weights (imports it
        # triggers, e.g. torch._dynamo through meta-device init), the loader's transient, what stays after the
        # run, and the run's transient peak (activations, logits, gathers) above that
        "overhead_breakdown": {
            "model_build_beyond_weights": stages["after_model"]["VmRSS"] - base - weights,
            "load_transient": stages["after_model"]["VmHWM"] - stages["after_model"]["VmRSS"],
            "kv_alloc_beyond_budget": stages["after_kv"]["VmRSS"] - stages["after_model"]["VmRSS"] - kv_bytes,
            "steady_after_run": stages["end_of_run"]["VmRSS"] - base - weights - kv_bytes,
            "run_transient_above_end": peak - stages["end_of_run"]["VmRSS"],
        },
        "overhead_mb": round(overhead / MB, 1),
        "limit_mb": args.limit_mb,
        "passed": passed,
        "stages": stages,
        "rss_trace_mb": [round(x / MB, 1) for x in rss_trace[:: max(1, len(rss_trace) // 200)]],
        "seconds": seconds,
    }
    # everything is measured: matplotlib may now cost what it likes
    write_json(result, args.out, NAME)
    order = ["process_start", "baseline", "after_model", "after_kv", "engine_ready", "end_of_run"]
    rows = [{"stage": s, "RSS MB": round(stages[s]["VmRSS"] / MB, 1), "peak RSS MB": round(stages[s]["VmHWM"] / MB, 1),
             "anon MB": round(stages[s].get("RssAnon", 0) / MB, 1),
             "file MB": round(stages[s].get("RssFile", 0) / MB, 1)}
            for s in order if s in stages]
    print_table(list(rows[0]), rows, title="RSS by stage")
    print_table(["baseline", "weights", "kv_budget", "peak", "overhead", "limit", "verdict"],
                [[round(base / MB, 1), round(weights / MB, 1), round(kv_bytes / MB, 1), round(peak / MB, 1),
                  round(overhead / MB, 1), args.limit_mb, "PASS" if passed else "FAIL"]],
                title="Peak memory (MB = 10^6 bytes)")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = [("baseline", base), ("after_model", stages.get("after_model", {}).get("VmRSS", 0)),
            ("after_kv", stages.get("after_kv", {}).get("VmRSS", 0)), ("peak", peak)]
    parts = {"baseline (python+torch)": [], "weights": [], "KV budget": [], "other (overhead)": []}
    for stage, rss in bars:
        w = weights if stage != "baseline" else 0
        kv = kv_bytes if stage in ("after_kv", "peak") else 0
        parts["baseline (python+torch)"].append(base / MB)
        parts["weights"].append(w / MB)
        parts["KV budget"].append(kv / MB)
        parts["other (overhead)"].append(max(0, rss - base - w - kv) / MB)
    bottom = [0.0] * len(bars)
    for (label, vals), color in zip(parts.items(), ["#bbbbbb", "#2b7bba", "#7fbf7f", "#e08050"]):
        ax.bar([b[0] for b in bars], vals, bottom=bottom, label=label, color=color)
        bottom = [x + v for x, v in zip(bottom, vals)]
    ax.axhline((base + weights + kv_bytes + limit) / MB, color="red", ls="--", lw=1,
               label=f"limit (+{args.limit_mb:g} MB)")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(f"engine RSS: overhead {overhead / MB:.0f} MB beyond weights + KV "
                 f"({'PASS' if passed else 'FAIL'})")
    ax.legend(fontsize=8)
    png = save_png(fig, NAME, args.out)
    log(f"wrote {Path(args.out) / (NAME + '.json')} and {png}")
    if tmp is not None:
        tmp.cleanup()
    if not passed:
        print(f"FAIL: overhead {overhead / MB:.1f} MB >= limit {args.limit_mb} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
