"""The reasoning router's mechanism: rows routed, thinking tokens and time against never and always reasoning, same
run, through DuckDB on the embedded engine.

A Qwen3-architecture checkpoint with Qwen3's thinking switch (``make_tiny_model(arch="qwen3")``) answers
``llm_filter`` over beer reviews (``../shared/data/llmsql/beer.csv``; synthetic rows when it is missing) with
``reasoning`` off, on, and ``auto`` at several thresholds. Random weights have no meaningful confidence and their
thinking helps nothing, so this measures the mechanism only (how many rows go to reasoning, what they cost);
whether reasoning pays in accuracy needs a real reasoning model. Every configuration runs on a fresh prefix cache,
with the result cache off.

    python bench/reasoning_router.py            # a few minutes on 2 cores
    python bench/reasoning_router.py --quick    # a small smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import REPO, checkpoint_dir, log, print_table, save_bar_chart, write_json  # noqa: E402

import duckdb  # noqa: E402

import llm_sql  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402
from engine_backend.tiny_training import rows_for  # noqa: E402

TABLE = REPO.parent / "shared" / "data" / "llmsql" / "beer.csv"
MODEL = dict(hidden_size=128, num_hidden_layers=4, intermediate_size=256, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32)
THRESHOLDS = (0.55, 0.7, 0.9)


def run(db, con, options: str) -> dict:
    db.session.backend.engine.reset_prefix_cache()
    start = time.perf_counter()
    values = [v for (v,) in db.sql("SELECT llm_filter('Is this beer worth buying?', name, style, taste, "
                                   f"{options}) FROM beers ORDER BY id").fetchall()]
    seconds = time.perf_counter() - start
    s = llm_sql.last_stats(con)
    return {"seconds": seconds, "rows": s.rows_in, "distinct_inputs": s.distinct_inputs,
            "rows_reasoned": s.rows_reasoned, "reasoning_tokens": s.reasoning_tokens, "generated_tokens": s.generated_tokens,
            "llm_calls": s.llm_calls, "true": sum(v is True for v in values),
            "tokens_saved_vs_on": s.generated_tokens_saved}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--budget", type=int, default=32, help="max_reasoning_tokens")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    dims, name = MODEL, "reasoning-qwen3"
    if args.quick:
        args.rows, args.budget = 12, 6
        dims, name = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128), "reasoning-qwen3-quick"
    model_dir = checkpoint_dir(name)
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, arch="qwen3", **dims)
    table = TABLE if TABLE.is_file() else None
    rows = [(i, r["beer/name"], r["beer/style"], r["review/taste"])
            for i, r in enumerate(rows_for(table, args.rows, seed=11, split="test"))]
    con = duckdb.connect()
    con.execute("CREATE TABLE beers (id INTEGER, name VARCHAR, style VARCHAR, taste VARCHAR)")
    con.executemany("INSERT INTO beers VALUES (?, ?, ?, ?)", rows)
    db = llm_sql.register(con, model=str(model_dir), cache=False, progress=False)
    budget = f"'max_reasoning_tokens': {args.budget}"
    configs = {"off": "{'reasoning': 'off'}", "on": f"{{'reasoning': 'on', {budget}}}"}
    configs.update({f"auto@{t}": f"{{'reasoning': 'auto', 'reasoning_threshold': {t}, {budget}}}"
                    for t in THRESHOLDS})
    run(db, con, configs["on"])  # warm-up (not timed): first-call costs
    results = {}
    for label, options in configs.items():
        results[label] = run(db, con, options)
        log(f"{label}: {results[label]['seconds']:.2f}s, {results[label]['rows_reasoned']} rows reasoned")
    on = results["on"]
    table_rows = [[label, r["rows_reasoned"], f"{r['rows_reasoned'] / max(1, r['distinct_inputs']):.0%}",
                   r["reasoning_tokens"], r["generated_tokens"], f"{r['seconds']:.2f}", f"{r['seconds'] / on['seconds']:.2f}",
                   f"{r['generated_tokens'] / max(1, on['generated_tokens']):.2f}"]
                  for label, r in results.items()]
    print_table(["config", "inputs reasoned", "share", "thinking tokens", "generated tokens", "seconds",
                 "time / always on", "tokens / always on"], table_rows,
                title=f"llm_filter over {len(rows)} beer rows, thinking budget {args.budget} ({model_dir.name}); "
                      "random weights: mechanism only")
    write_json({"rows": len(rows), "budget": args.budget, "results": results}, args.out, "reasoning_router")
    save_bar_chart({label: {"seconds": r["seconds"]} for label, r in results.items()}, "seconds",
                   "llm_filter: reasoning off / on / auto", args.out, "reasoning_router")
    return 0


if __name__ == "__main__":
    sys.exit(main())
