"""Pie on the embedded engine: swapping and streaming KV to the host tier against recomputation, same run.

Two workloads, each with its baselines measured in the same run, on a 24-layer random Llama body with the
Qwen2 vocabulary (Pie's premise needs many layers: a streamed request costs the device only the staging of
``STAGING_DEPTH`` of its layers at a time). Prompts are LLM-SQL's own (``udf.prompts.make_prompt``).

1. Memory pressure: ``--prompts`` beer rows (``../shared/data/llmsql/beer.csv``, grouped by beer as the
   optimiser orders them), each generating ``--max-tokens`` tokens, ``--max-num-seqs`` at a time, with a device
   KV budget of a quarter of what the unbounded run's running set held at its peak (prefix sharing included).
   Preemption by recomputation, by swapping with and without streaming, and ``auto`` (the default), against an
   unbounded budget.
   Aim: swap at least 1.5x over recompute and within 10% of the unbounded budget.
2. Many prefixes: ``llm_filter`` over ``movies_small.csv`` in table order (51 movies interleaved across
   1,019 rows, reordering off), the movie's description before the review, with a device budget whose
   prefix cache holds a few movies: without a host tier, with one, and with an unbounded device budget.
   Aim: hit rate within 5 points of the unbounded budget, time at least 1.3x better than without the host tier.

    python bench/pie_swap.py                # both workloads, about 15 minutes on 2 cores
    python bench/pie_swap.py --quick        # a small smoke run
    python bench/pie_swap.py --device cuda  # Pie's real setting: pinned host memory, a copy stream
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import REPO, checkpoint_dir, log, print_table, save_bar_chart, timed_generate, write_json  # noqa: E402

import torch  # noqa: E402

from engine_backend import LLMEngine, SamplingParams  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402
from engine_backend.tokenizer import Tokenizer  # noqa: E402
from udf.prompts import make_prompt  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "llmsql"
# Depth like Qwen2.5-0.5B's 24 layers, width kept small so that a CPU runs it.
PIE_MODEL = dict(hidden_size=256, num_hidden_layers=24, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 intermediate_size=704, max_position_embeddings=2048, tie_word_embeddings=True)
BEER_FIELDS = ["beer/name", "beer/style", "review/overall", "review/taste", "review/palate", "review/appearance",
               "review/profileName"]


def read_csv(name: str, limit: int) -> list[dict]:
    path = DATA / name
    if not path.exists():
        sys.exit(f"pie_swap: {path} is missing (the shared data folder sits beside the repository)")
    with path.open(newline="") as f:
        return [row for _, row in zip(range(limit), csv.DictReader(f))]


def pressure_prompts(n: int) -> list[str]:
    rows = sorted(read_csv("beer.csv", n), key=lambda r: (r["beer/style"], r["beer/name"]))
    return [make_prompt("llm", "Describe in a few words how this beer tastes, given its review scores.",
                        [(f, r[f]) for f in BEER_FIELDS]) for r in rows]


def prefix_prompts(n: int) -> list[str]:
    return [make_prompt("llm_filter", "Is this review positive about the movie?",
                        [("movie_info", r["movie_info"]), ("review_content", r["review_content"])])
            for r in read_csv("movies_small.csv", n)]


def run(model_dir: str, prompts: list[str], max_tokens: int, tok: Tokenizer, **engine_args) -> dict:
    max_model_len = max(len(tok.encode(p)) for p in prompts) + max_tokens + 1  # what the budget must hold alone
    engine = LLMEngine(model=model_dir, max_num_batched_tokens=2048, max_model_len=max_model_len, **engine_args)
    outs, seconds, before, s = timed_generate(engine, prompts, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    prompt_tokens = s["prompt_tokens"] - before["prompt_tokens"]
    cached = s["cached_prompt_tokens"] - before["cached_prompt_tokens"]
    errors = sum(o.finish_reason == "error" for o in outs)
    if errors:
        sys.exit(f"pie_swap: {errors} requests failed: {next(o.error for o in outs if o.error)}")
    return {
        "seconds": seconds, "requests_per_s": len(prompts) / seconds,
        "prompt_tokens": prompt_tokens, "generated_tokens": sum(len(o.token_ids) for o in outs),
        "prefix_hit_rate": cached / prompt_tokens,
        "host_cached_prompt_tokens": s["host_cached_prompt_tokens"] - before["host_cached_prompt_tokens"],
        "device_kv_bytes": s["kv_pages_total"] * s["kv_page_bytes"] + s["kv_staging_bytes"],
        "peak_kv_bytes": s["peak_kv_pages_running"] * s["kv_page_bytes"],
        "kv_staging_bytes": s["kv_staging_bytes"], "host_kv_bytes": s["host_kv_bytes_total"],
        "preemptions": s["preemptions"], "preemptions_swapped": s["preemptions_swapped"],
        "stream_demotions": s["stream_demotions"], "stream_share_end": s["stream_share"],
        "swapped_out_blocks": s["swapped_out_blocks"], "swapped_in_blocks": s["swapped_in_blocks"],
        "swap_seconds": s["swap_seconds"], "swap_hidden_fraction": s["swap_hidden_fraction"],
        "outputs": [o.token_ids for o in outs],
    }


def same_outputs(results: dict[str, dict]) -> bool:
    outputs = [r.pop("outputs") for r in results.values()]
    return all(o == outputs[0] for o in outputs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300, help="memory-pressure prompts (beer rows)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--rows", type=int, default=1019, help="many-prefix rows (movies_small.csv)")
    ap.add_argument("--cached-movies", type=float, default=4.0, help="prefixes the small device budget caches")
    ap.add_argument("--quick", action="store_true", help="a small smoke run (few prompts, narrow model)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    model_args = dict(PIE_MODEL)
    if args.quick:
        args.prompts, args.max_tokens, args.max_num_seqs, args.rows = 24, 12, 12, 60
        model_args.update(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                          intermediate_size=128)
    name = "pie-quick" if args.quick else "pie-24l-qwen2"
    model_dir = checkpoint_dir(name)
    if not (model_dir / "config.json").exists():
        log(f"writing the checkpoint {model_dir}")
        make_tiny_model(model_dir, arch="llama", tokenizer="qwen2", **model_args)
    tok = Tokenizer.from_dir(model_dir)
    probe = LLMEngine(model=str(model_dir), kv_cache_memory="64MB", device=args.device, swap_space=0)
    bytes_per_token = probe.kv.large_page_bytes // probe.kv.block_size

    # ---- 1. memory pressure ----------------------------------------------------------------------------
    prompts = pressure_prompts(args.prompts)
    mean_len = sum(len(tok.encode(p)) for p in prompts) / len(prompts)
    unshared = int(args.max_num_seqs * (mean_len + args.max_tokens + probe.kv.block_size) * bytes_per_token)
    pressure = {"unbounded": run(str(model_dir), prompts, args.max_tokens, tok, device=args.device,
                                 max_num_seqs=args.max_num_seqs, kv_cache_memory=2 * unshared, swap_space=0,
                                 preemption="recompute")}
    log(f"memory pressure, unbounded: {pressure['unbounded']['seconds']:.1f} s")
    running_set = pressure["unbounded"]["peak_kv_bytes"]  # what the running set held at its peak, sharing included
    quarter = running_set // 4
    configs = {
        "recompute": dict(kv_cache_memory=quarter, swap_space=0, preemption="recompute"),
        "swap, no streaming": dict(kv_cache_memory=quarter, swap_space=2 * running_set, preemption="swap",
                                   stream_expansion=0),
        "swap + streaming": dict(kv_cache_memory=quarter, swap_space=2 * running_set, preemption="swap",
                                 stream_expansion=3),
        "auto (default)": dict(kv_cache_memory=quarter, swap_space=2 * running_set),
    }
    for label, engine_args in configs.items():
        pressure[label] = run(str(model_dir), prompts, args.max_tokens, tok, device=args.device,
                              max_num_seqs=args.max_num_seqs, **engine_args)
        log(f"memory pressure, {label}: {pressure[label]['seconds']:.1f} s")
    pressure_exact = same_outputs(pressure)
    base = pressure["recompute"]["seconds"]
    unbounded = pressure["unbounded"]["seconds"]
    for r in pressure.values():
        r["speedup_over_recompute"] = base / r["seconds"]
        r["throughput_vs_unbounded"] = unbounded / r["seconds"]

    # ---- 2. many prefixes --------------------------------------------------------------------------------
    prompts = prefix_prompts(args.rows)
    lens = [len(tok.encode(p)) for p in prompts]
    seqs = max(4, args.max_num_seqs // 4)
    head_and_movie = sorted(lens)[len(lens) // 2]  # a movie's prefix is most of its prompt
    small = int((seqs * (max(lens) + 2 * probe.kv.block_size) + args.cached_movies * head_and_movie) * bytes_per_token)
    configs = {
        "unbounded device": dict(kv_cache_memory=max(small * 16, 64 * 2**20), swap_space=0),
        "small device": dict(kv_cache_memory=small, swap_space=0),
        "small device + host tier": dict(kv_cache_memory=small, swap_space=max(small * 16, 64 * 2**20)),
    }
    prefixes = {}
    for label, engine_args in configs.items():
        prefixes[label] = run(str(model_dir), prompts, 2, tok, device=args.device, max_num_seqs=seqs, **engine_args)
        log(f"many prefixes, {label}: {prefixes[label]['seconds']:.1f} s, "
            f"hit rate {prefixes[label]['prefix_hit_rate']:.1%}")
    prefix_exact = same_outputs(prefixes)
    without = prefixes["small device"]["seconds"]
    for r in prefixes.values():
        r["speedup_over_no_host_tier"] = without / r["seconds"]

    data = {
        "model": {"checkpoint": name, **model_args, "kv_bytes_per_token": bytes_per_token},
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "memory_pressure": {
            "prompts": args.prompts, "max_tokens": args.max_tokens, "max_num_seqs": args.max_num_seqs,
            "mean_prompt_tokens": mean_len, "running_set_kv_bytes": running_set, "device_budget_bytes": quarter,
            "outputs_identical": pressure_exact, "runs": pressure,
        },
        "many_prefixes": {
            "rows": args.rows, "movies": 51, "max_num_seqs": seqs, "device_budget_bytes": small,
            "outputs_identical": prefix_exact, "runs": prefixes,
            "hit_rate_gap_points": 100 * (prefixes["unbounded device"]["prefix_hit_rate"]
                                          - prefixes["small device + host tier"]["prefix_hit_rate"]),
        },
    }
    write_json(data, args.out, "pie_swap")
    print_table(["run", "seconds", "x recompute", "x unbounded", "preempt", "swapped", "streamed", "hidden"],
                [[k, r["seconds"], r["speedup_over_recompute"], r["throughput_vs_unbounded"], r["preemptions"],
                  r["preemptions_swapped"], r["stream_demotions"], r["swap_hidden_fraction"]]
                 for k, r in pressure.items()], title="Memory pressure (device budget = 1/4 of the running set)")
    print_table(["run", "seconds", "x no host tier", "hit rate", "host hit tokens"],
                [[k, r["seconds"], r["speedup_over_no_host_tier"], r["prefix_hit_rate"], r["host_cached_prompt_tokens"]]
                 for k, r in prefixes.items()], title="Many prefixes (movies in table order)")
    save_bar_chart({"memory pressure": {k: r["seconds"] for k, r in pressure.items()},
                    "many prefixes": {k: r["seconds"] for k, r in prefixes.items()}},
                   "seconds", "Pie: host-tier KV against recomputation (lower is better)", args.out, "pie_swap")
    return 0


if __name__ == "__main__":
    sys.exit(main())
