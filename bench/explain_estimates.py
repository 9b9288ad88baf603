"""EXPLAIN's estimates against the run: ``llm_sql.explain(con, sql, analyze=True)`` on the shipped tables.

The published query types of ``bench/llm_sql_queries.py`` (filter, projection, filter then projection, an
aggregation over ``llm_score``) on ``../shared/data/llmsql/beer.csv`` and ``movies_small.csv`` (every column as
text), one after another on ONE embedded engine, each on a fresh prefix cache, with the persistent result cache
off. Per LLM stage the report puts the estimate (made just before the stage runs, from what the backend measured
on the batches before it) beside the actual from ``last_stats``: requests, prompt tokens (tokenised with the
engine's tokenizer), cached prompt tokens (the block-level prefix-cache simulation), generated tokens, and the
LLM seconds with their ratio estimate / actual. The first stage's time comes from the short probe ``explain``
runs on a backend that has measured nothing (``llm_sql.estimate.probe``); each later stage's from every batch
before it. ``--passes 2`` runs the queries a second time on the history of the first.

The model is ``bench/llm_sql_queries.py``'s: a random-weight Llama (hidden 256, 4 layers) with Qwen2's
vocabulary, so tokens and prefix hits are a real deployment's while the answers are nonsense (free text runs to
``max_tokens``, which a trained model would not do). Timings are of this machine, with whatever else runs on it.
Torch runs on one thread by default (``--threads``): on a shared 2-core machine two OpenMP threads wait on each
other whenever another process takes a core, and the same batch then took anything from 0.4 s to 8.4 s (one
thread: 0.74 to 0.80 s), which no estimate from past batches can follow.

    python bench/explain_estimates.py            # beer 240 rows, movies 120 rows: several minutes on 2 cores
    python bench/explain_estimates.py --quick    # 24 rows each: a smoke run
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import log, print_table, save_bar_chart, write_json  # noqa: E402
from llm_sql_queries import load_tables, model_dir, queries  # noqa: E402

import duckdb  # noqa: E402

import llm_sql  # noqa: E402

AIM = 0.30  # the aim: estimated time within 30% of the actual


def stage_rows(name: str, ex, run: int) -> list[dict]:
    rows = []
    for s in ex.stages:
        a = s.get("actual")
        if a is None or "est_requests" not in s:
            continue
        est_s, act_s = s.get("est_seconds"), a["llm_seconds"]
        rows.append(dict(
            query=name, run=run, stage=s["stage"], role=s["role"],
            requests_est=s["est_requests"], requests=a["llm_calls"],
            prompt_tokens_est=s["est_prompt_tokens"], prompt_tokens=a["prompt_tokens"],
            cached_est=s["est_cached_prompt_tokens"], cached=a["cached_prompt_tokens"],
            hit_est=round(s["est_hit_rate"], 4),
            hit=round(a["cached_prompt_tokens"] / a["prompt_tokens"], 4) if a["prompt_tokens"] else 0.0,
            generated_est=s["est_generated_tokens"], generated=a["generated_tokens"],
            generated_source=s["est_generated_source"],
            seconds_est=None if est_s is None else round(est_s, 3), seconds=round(act_s, 3),
            ratio=round(est_s / act_s, 3) if est_s is not None and act_s else None,
            time_model=s["est_seconds_source"]))
    return rows


def arguments(description: str) -> argparse.ArgumentParser:
    """The options this bench and ``explain_estimates_spark.py`` share: the tables, the queries, the model."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="24 rows a table: a smoke run")
    ap.add_argument("--rows", type=int, default=None, help="rows of beer.csv (default 240)")
    ap.add_argument("--movie-rows", type=int, default=None, help="rows of movies_small.csv (default 120)")
    ap.add_argument("--queries", default=None, help="comma-separated names (default: all eight)")
    ap.add_argument("--model", default=None, metavar="DIR", help="a model directory (default: the tiny random Llama)")
    ap.add_argument("--max-tokens", type=int, default=8, help="llm()'s max_tokens (default 8)")
    ap.add_argument("--out", default="bench/results")
    return ap


def chosen(args: argparse.Namespace) -> tuple[int, int, dict[str, dict], str]:
    """(beer rows, movie rows, the queries by name, the model directory) that ``arguments``' options choose."""
    beer_rows = args.rows or (24 if args.quick else 240)
    movie_rows = args.movie_rows or (24 if args.quick else 120)
    qs = queries(beer_rows, movie_rows)
    if args.queries:
        qs = {k: qs[k] for k in args.queries.split(",")}
    return beer_rows, movie_rows, qs, model_dir(args.model, "tiny", "qwen2")


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__.split("\n")[0])
    ap.add_argument("--passes", type=int, default=1, help="run the queries this many times (default 1)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: see the module doc; 0 keeps torch's own default)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    beer_rows, movie_rows, qs, model = chosen(args)
    con = duckdb.connect()
    counts = load_tables(con, qs, beer_rows, movie_rows)
    db = llm_sql.register(con, model=model, cache=False, progress=False, max_tokens=args.max_tokens)
    engine = db.session.backend.engine
    rows, queries_out = [], []
    for run in range(1, max(1, args.passes) + 1):
        for name, q in qs.items():
            engine.reset_prefix_cache()
            start = time.perf_counter()
            ex = llm_sql.explain(db, q["sql"], analyze=True)
            seconds = time.perf_counter() - start
            got = stage_rows(name, ex, run)
            rows += got
            est = sum(r["seconds_est"] or 0.0 for r in got)
            act = sum(r["seconds"] for r in got)
            queries_out.append(dict(query=name, run=run, table_rows=counts[q["table"]], stages=len(got),
                                    seconds_est=round(est, 3), seconds=round(act, 3),
                                    ratio=round(est / act, 3) if act else None,
                                    probe_seconds=round(ex.probe_seconds, 3), wall_seconds=round(seconds, 3)))
            log(f"run {run} {name:20s} est {est:7.2f} s  actual {act:7.2f} s  ratio "
                f"{queries_out[-1]['ratio']}" + (f"  (probe {ex.probe_seconds:.1f} s)" if ex.probe_seconds else ""))
    ratios = [r["ratio"] for r in queries_out if r["ratio"] is not None]
    stage_ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    summary = dict(
        queries=len(ratios), within_aim=sum(abs(r - 1) <= AIM for r in ratios),
        stages=len(stage_ratios), stages_within_aim=sum(abs(r - 1) <= AIM for r in stage_ratios),
        median_abs_error=round(statistics.median(abs(r - 1) for r in ratios), 3) if ratios else None,
        worst_ratio=max(ratios, key=lambda r: abs(r - 1)) if ratios else None,
        tokens_exact=all(r["prompt_tokens_est"] == r["prompt_tokens"] for r in rows),
        cached_exact=all(r["cached_est"] == r["cached"] for r in rows),
        generated_exact=all(r["generated_est"] == r["generated"] for r in rows))
    if args.passes > 1:  # the machine's own noise: the same query's actual seconds from one pass to the next
        first = {r["query"]: r["seconds"] for r in queries_out if r["run"] == 1}
        spread = [r["seconds"] / first[r["query"]] for r in queries_out if r["run"] > 1 and first[r["query"]]]
        summary["run_to_run_median_abs_change"] = round(statistics.median(abs(x - 1) for x in spread), 3)
        summary["run_to_run_worst"] = round(max(spread, key=lambda x: abs(x - 1)), 3)
    import torch

    data = dict(benchmark="explain_estimates", model=model, beer_rows=beer_rows, movie_rows=movie_rows,
                max_tokens=args.max_tokens, torch_threads=torch.get_num_threads(), aim=f"estimated LLM seconds within {AIM:.0%} of the actual",
                summary=summary, queries=queries_out, stages=rows)
    write_json(data, args.out, "explain_estimates")
    print_table(["query", "run", "stage", "role", "requests_est", "requests", "prompt_tokens_est", "prompt_tokens",
                 "hit_est", "hit", "generated_est", "generated", "seconds_est", "seconds", "ratio"], rows,
                title="per stage: estimate (before it ran) vs actual")
    print_table(["query", "run", "table_rows", "stages", "seconds_est", "seconds", "ratio", "probe_seconds"],
                queries_out, title="per query: estimated vs actual LLM seconds")
    print(f"\nwithin {AIM:.0%}: {summary['within_aim']} of {summary['queries']} queries, "
          f"{summary['stages_within_aim']} of {summary['stages']} stages; median |ratio - 1| "
          f"{summary['median_abs_error']}; tokens exact: {summary['tokens_exact']}, cached tokens exact: "
          f"{summary['cached_exact']}, generated tokens exact: {summary['generated_exact']}")
    if "run_to_run_worst" in summary:
        print(f"the same query's actual seconds from pass to pass: median change "
              f"{summary['run_to_run_median_abs_change']:.1%}, worst x{summary['run_to_run_worst']}")
    save_bar_chart({f"{r['query']}#{r['run']}": {"estimate": r["seconds_est"], "actual": r["seconds"]}
                    for r in queries_out}, "LLM seconds", "EXPLAIN estimate vs actual", args.out, "explain_estimates")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
