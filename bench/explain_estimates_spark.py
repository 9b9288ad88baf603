"""EXPLAIN's estimates against the run in Spark: ``llm_sql.explain(spark, sql, analyze=True)`` on the shipped tables.

``bench/explain_estimates.py``'s eight queries (filter, projection, filter then projection, an aggregation over
``llm_score``, on ``../shared/data/llmsql/beer.csv`` and ``movies_small.csv``, every column as text) in Spark SQL,
fields passed as ``struct(...)`` so the prompts name them as DuckDB's do, on a local[2] session with the Catalyst
extension and one node engine server, the persistent result cache off. Per LLM call the driver estimates before
the run (the rows the rules will send, tokenised with the checkpoint's tokenizer, the server's prefix cache and
the time model fitted on the server's own measured busy periods) and the workers report the actuals for the
same call: requests, prompt / cached / generated tokens, and as LLM seconds the wall time during which any of
the call's batches was being answered. A call over another LLM call's output (the projection of a multi query)
is not estimated (counting its rows would call the model); its actual is listed alone. The first query's time
comes from the short probe ``explain`` runs on a server that has measured nothing.

The model is ``bench/llm_sql_queries.py``'s random-weight Llama with Qwen2's vocabulary. The server runs torch on
``--threads`` threads (default 1, through ``OMP_NUM_THREADS``; see ``bench/explain_estimates.py`` on why).

    python bench/explain_estimates_spark.py            # beer 240 rows, movies 120 rows
    python bench/explain_estimates_spark.py --quick    # 24 rows each: a smoke run
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import log, print_table, write_json  # noqa: E402
from explain_estimates import AIM, arguments, chosen  # noqa: E402
from llm_sql_queries import BEER_FIELDS, DATA, MOVIE_FIELDS  # noqa: E402


def spark_sql(sql: str) -> str:
    """A query of ``llm_sql_queries.queries`` in Spark SQL: fields in a struct (named as DuckDB names them),
    identifiers in backticks."""
    for fields in (BEER_FIELDS, MOVIE_FIELDS):
        listed = ", ".join(fields)
        sql = sql.replace(f"', {listed})", f"', struct({listed}))")
    return sql.replace('"', "`")


def load_tables(spark, beer_rows: int, movie_rows: int) -> dict[str, int]:
    import pandas as pd

    counts = {}
    for table, csv, rows in (("beer", "beer.csv", beer_rows), ("movies", "movies_small.csv", movie_rows)):
        frame = pd.read_csv(DATA / csv, dtype=str, keep_default_na=False, nrows=rows)
        # a LIMIT in the view would keep the rules off (they leave row-bounded plans alone): a local table
        spark.createDataFrame(frame).repartition(2).createOrReplaceTempView(table)
        counts[table] = len(frame)
    return counts


def call_rows(name: str, ex) -> list[dict]:
    rows = []
    for s in ex.stages:
        a = s.get("actual")
        if a is None:
            continue
        est_s, act_s = s.get("est_seconds"), a["llm_seconds"]
        rows.append(dict(
            query=name, stage=s["stage"], function=s["function"], estimated="est_requests" in s,
            requests_est=s.get("est_requests"), requests=a["llm_calls"],
            prompt_tokens_est=s.get("est_prompt_tokens"), prompt_tokens=a["prompt_tokens"],
            cached_est=s.get("est_cached_prompt_tokens"), cached=a["cached_prompt_tokens"],
            generated_est=s.get("est_generated_tokens"), generated=a["generated_tokens"],
            seconds_est=None if est_s is None else round(est_s, 3), seconds=round(act_s, 3),
            ratio=round(est_s / act_s, 3) if est_s is not None and act_s else None))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the engine server (default 1)")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the node server inherits it
    import llm_sql
    from llm_sql import spark_mode

    beer_rows, movie_rows, qs, model = chosen(args)
    spark = llm_sql.spark_session(model=model, master="local[2]", skystore=False, cache=False, progress=False,
                                  max_tokens=args.max_tokens,
                                  conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                                        "spark.sql.shuffle.partitions": "2"})
    spark.sparkContext.setLogLevel("ERROR")
    counts = load_tables(spark, beer_rows, movie_rows)
    calls, per_query = [], []
    try:
        for name, q in qs.items():
            start = time.perf_counter()
            ex = llm_sql.explain(spark, spark_sql(q["sql"]), analyze=True)
            wall = time.perf_counter() - start
            got = call_rows(name, ex)
            calls += got
            timed = [r for r in got if r["ratio"] is not None]
            est, act = sum(r["seconds_est"] for r in timed), sum(r["seconds"] for r in timed)
            per_query.append(dict(query=name, table_rows=counts[q["table"]], calls=len(got), estimated=len(timed),
                                  seconds_est=round(est, 3), seconds=round(act, 3),
                                  ratio=round(est / act, 3) if act else None, run_seconds=round(ex.run_seconds, 3),
                                  probe_seconds=round(ex.probe_seconds, 3), wall_seconds=round(wall, 3)))
            log(f"{name:20s} est {est:7.2f} s  actual {act:7.2f} s  ratio {per_query[-1]['ratio']}"
                + (f"  (probe {ex.probe_seconds:.1f} s)" if ex.probe_seconds else ""))
    finally:
        spark_mode.stop(spark)
        spark.stop()
    ratios = [r["ratio"] for r in per_query if r["ratio"] is not None]
    timed = [r for r in calls if r["ratio"] is not None]
    summary = dict(
        queries=len(ratios), within_aim=sum(abs(r - 1) <= AIM for r in ratios),
        median_abs_error=round(statistics.median(abs(r - 1) for r in ratios), 3) if ratios else None,
        worst_ratio=max(ratios, key=lambda r: abs(r - 1)) if ratios else None,
        requests_exact=all(r["requests_est"] == r["requests"] for r in timed),
        tokens_exact=all(r["prompt_tokens_est"] == r["prompt_tokens"] for r in timed),
        generated_exact=all(r["generated_est"] == r["generated"] for r in timed),
        cached_share_error_max=round(max((abs(r["cached_est"] - r["cached"]) / r["prompt_tokens"] for r in timed
                                          if r["prompt_tokens"]), default=0.0), 4))
    write_json(dict(benchmark="explain_estimates_spark", model=model, beer_rows=beer_rows, movie_rows=movie_rows,
                    max_tokens=args.max_tokens, server_threads=args.threads,
                    aim=f"estimated LLM seconds within {AIM:.0%} of the actual", summary=summary,
                    queries=per_query, calls=calls), args.out, "explain_estimates_spark")
    print_table(["query", "stage", "function", "requests_est", "requests", "prompt_tokens_est", "prompt_tokens",
                 "cached_est", "cached", "generated_est", "generated", "seconds_est", "seconds", "ratio"], calls,
                title="per LLM call: estimate (before the run) vs actual (the workers' reports)")
    print_table(["query", "table_rows", "calls", "estimated", "seconds_est", "seconds", "ratio", "run_seconds",
                 "probe_seconds"], per_query, title="per query: estimated vs actual LLM seconds of the estimated calls")
    print(f"\nwithin {AIM:.0%}: {summary['within_aim']} of {summary['queries']} queries; median |ratio - 1| "
          f"{summary['median_abs_error']}; requests exact: {summary['requests_exact']}, prompt tokens exact: "
          f"{summary['tokens_exact']}, generated exact: {summary['generated_exact']}, cached tokens off by at most "
          f"{summary['cached_share_error_max']:.1%} of the prompt tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
