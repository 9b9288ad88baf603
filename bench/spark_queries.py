"""The LLM filter and projection on beer.csv in Spark (local[2], Catalyst extension loaded), three configurations.

The DuckDB benchmark's queries (``bench/llm_sql_queries.py``: same instructions, every column of
``../shared/data/llmsql/beer.csv`` read as a string and passed, in the CSV's order, as one ``struct(...)`` so
that the prompt names the fields), run through ``llm_sql.spark_session`` on a local[2] session:

- ``rules_on``:  Catalyst rules on (``llm_sql.optimize=true``: dedup, row ordering within partitions) and the
                 UDF's per-batch dedup and reordering (with ``reorder_fields``, as the DuckDB ``optimized``
                 configuration), prefix cache on
- ``rules_off``: ``llm_sql.optimize=false`` and ``register(optimize=False)`` (no dedup, no reordering), prefix
                 cache on
- ``rules_on_rows``: as ``rules_on`` with the written field order (``reorder_fields=False``): rows only
- ``no_cache``:  as ``rules_off`` on an engine server started with ``enable_prefix_caching=False``
- ``duckdb`` and ``duckdb_rows``: the same query, options and checkpoint in DuckDB on an in-process engine
                 (the rewriter's one global order), the reference for what Spark's per-partition order costs

Each (query, configuration) runs on a FRESH node engine server (``llm_sql.spark_mode.stop`` then ``register``
again), so its prefix cache starts empty; one warm-up call on another instruction (the Python worker start)
is made before the timing and left out of the statistics. Timed: ``df.collect()`` of the query; the table is
cached in memory (and counted) before. Statistics: ``llm_sql.last_stats(spark)`` after ``reset_stats``.

The model is the DuckDB benchmark's random-weight Llama (``make_tiny_model``, ``--tokenizer qwen2`` by default:
Qwen's real vocabulary), so its answers are nonsense: only the mechanisms (calls, tokens, prefix hits) and the
timings mean something. Prompts are in the checkpoint's chat template as far as the node server allows: the
UDF sends completion prompts, so the template's system turn and the opening of the user turn go in as the
``system`` option (the udf layout's head); the closing of the turn is left off (``--no-chat``: the bare layout).

With ``--analyze`` beer is a catalog table with column statistics and ``llm_sql.field_order=statistics``, so
``rules_on`` takes one field order for all rows from them (the ``ChooseFieldOrder`` rule) instead of the UDF's
per-batch GGR.

    python bench/spark_queries.py [--quick] [--rows N] [--model DIR | --size tiny|24m] [--tokenizer qwen2|gpt2|trained]
                                  [--analyze] [--configs rules_on,...] [--queries beer_filter,...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, print_table, save_bar_chart, write_json  # noqa: E402
from llm_sql_queries import (BEER_FIELDS, CONFIGS as DUCKDB_CONFIGS, DATA, DEFAULT_TOKENIZER, SIZES,  # noqa: E402
                             TOKENIZER_CHOICES, ChatLayout, load_tables, model_dir, model_note, queries, run_queries)

QUERIES = ("beer_filter", "beer_projection")
CONFIGS = {
    "rules_on": dict(prefix_cache=True, optimize=True, options=dict(reorder_fields=True)),
    "rules_on_rows": dict(prefix_cache=True, optimize=True, options=dict(reorder_fields=False)),
    "rules_off": dict(prefix_cache=True, optimize=False, options={}),
    "no_cache": dict(prefix_cache=False, optimize=False, options={}),
}
DUCKDB = {"duckdb": "optimized", "duckdb_rows": "optimized_rows"}  # our name -> the DuckDB benchmark's config


def spark_sql(duckdb_sql: str) -> str:
    """The DuckDB query in Spark SQL: backquoted identifiers, the fields as one struct (named after the columns)."""
    ticked = ", ".join(f.replace('"', "`") for f in BEER_FIELDS)
    sql = duckdb_sql.replace('"', "`")
    assert ticked in sql, sql
    return sql.replace(ticked, f"struct({ticked})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 rows: a smoke run")
    ap.add_argument("--rows", type=int, default=None, help="rows of beer.csv (default 2000)")
    ap.add_argument("--model", default=None, metavar="DIR", help="a model directory (default: tiny random Llama)")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, default=DEFAULT_TOKENIZER,
                    help="the random checkpoint's vocabulary (default qwen2; trained: the old 512-token BPE)")
    ap.add_argument("--no-chat", action="store_true", help="the bare udf layout, without the chat template's head")
    ap.add_argument("--queries", default=",".join(QUERIES), help="comma-separated subset of " + ", ".join(QUERIES))
    ap.add_argument("--configs", default=",".join([*CONFIGS, *DUCKDB]),
                    help="comma-separated subset of " + ", ".join([*CONFIGS, *DUCKDB]))
    ap.add_argument("--max-tokens", type=int, default=8, help="longest llm() answer (default 8)")
    ap.add_argument("--kv-cache-memory", default="2GB")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--analyze", action="store_true",
                    help="store beer as a catalog table with column statistics (ANALYZE ... FOR ALL COLUMNS), so "
                         "that rules_on takes its field order from them (ChooseFieldOrder) instead of per batch")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)

    import llm_sql
    from llm_sql import spark_mode

    rows = args.rows or (200 if args.quick else 2000)
    model = model_dir(args.model, args.size, args.tokenizer)
    log(f"model {model}")
    wanted_q = [q for q in args.queries.split(",") if q]
    wanted_c = [c for c in args.configs.split(",") if c]
    if set(wanted_q) - set(QUERIES) or set(wanted_c) - set(CONFIGS) - set(DUCKDB):
        ap.error(f"unknown queries or configs in {args.queries!r} / {args.configs!r}")
    duck_qs = {k: v for k, v in queries(rows, 0).items() if k in wanted_q}
    qs = {k: spark_sql(v["sql"]) for k, v in duck_qs.items()}
    configs = {k: v for k, v in CONFIGS.items() if k in wanted_c}
    layout = {}
    if not args.no_chat:
        from engine_backend.tokenizer import Tokenizer

        head, _tail = ChatLayout(Tokenizer.from_dir(model)).split()
        layout = dict(system=head)  # the template's system turn and the user turn's opening, as the udf's head
        log(f"system option (chat template head): {head!r}")

    def engine(cfg: dict) -> None:
        llm_sql.register(spark, model=model, optimize=cfg["optimize"], enable_prefix_caching=cfg["prefix_cache"],
                         cache=False,
                         kv_cache_memory=args.kv_cache_memory, max_tokens=args.max_tokens, **cfg["options"], **layout)

    t0 = time.perf_counter()
    first = CONFIGS["rules_on"]
    spark = llm_sql.spark_session(
        model=model, master=args.master, app_name="llm-sql-bench",
        conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
              "spark.sql.shuffle.partitions": "2", "spark.driver.memory": "2g"},
        optimize=True, enable_prefix_caching=True, kv_cache_memory=args.kv_cache_memory, cache=False,
        max_tokens=args.max_tokens, **first["options"], **layout)
    spark.sparkContext.setLogLevel("ERROR")
    extension = spark_mode.extension_loaded(spark)
    log(f"session up in {time.perf_counter() - t0:.1f} s; Catalyst extension loaded: {extension}")
    beer = (spark.read.option("header", True).option("multiLine", True).option("escape", '"')
            .csv(str(DATA / "beer.csv")).limit(rows).cache())
    n = beer.count()
    beer.createOrReplaceTempView("beer")
    if args.analyze:  # an external table in a temporary folder: no warehouse directory is left behind
        import tempfile

        where = Path(tempfile.mkdtemp(prefix="llm-sql-bench-")) / "beer"
        beer.write.parquet(str(where))
        spark.catalog.dropTempView("beer")
        spark.sql(f"CREATE TABLE beer USING parquet LOCATION '{where}'")
        spark.sql("ANALYZE TABLE beer COMPUTE STATISTICS FOR ALL COLUMNS")
        spark.sql("CACHE TABLE beer")
        spark.conf.set("llm_sql.field_order", "statistics")  # rules_on: ChooseFieldOrder instead of per batch
        log(f"beer stored at {where} with column statistics")
    partitions = beer.rdd.getNumPartitions()
    log(f"beer: {n} rows, {len(beer.columns)} columns, {partitions} partition(s)")
    warm = "SELECT llm_filter('Warm-up: is this a beer?', struct(`beer/name`)) AS w FROM (SELECT * FROM beer LIMIT 4)"

    results = []
    for qname, sql in qs.items():
        for cname, cfg in configs.items():
            spark_mode.stop(spark)  # a fresh engine server: an empty prefix cache
            engine(cfg)
            spark.sql(warm).collect()
            spark_mode.reset_stats(spark)
            df = spark.sql(sql)
            if cname == "rules_on":  # the field order the rules chose shows in the plan's LLM call
                plan = df._jdf.queryExecution().optimizedPlan().toString()
                log("  " + next((ln.strip() for ln in plan.splitlines() if "named_struct(" in ln), "")[:300])
            start = time.perf_counter()
            out = df.collect()
            seconds = time.perf_counter() - start
            s = llm_sql.last_stats(spark)
            row = dict(query=qname, config=cname, rows=n, result_rows=len(out), seconds=round(seconds, 3),
                       rows_in=s.rows_in, distinct_inputs=s.distinct_inputs, llm_calls=s.llm_calls,
                       prompt_tokens=s.prompt_tokens, cached_prompt_tokens=s.cached_prompt_tokens,
                       hit_rate=round(s.prefix_hit_rate, 4), generated_tokens=s.generated_tokens,
                       batches=s.batches, errors=s.errors, server_pids=s.server_pids,
                       optimize_conf=spark.conf.get(spark_mode.OPTIMIZE_CONF, None),
                       tokens_per_prompt=round(s.prompt_tokens / s.llm_calls, 1) if s.llm_calls else 0.0)
            results.append(row)
            log(f"{qname:16s} {cname:10s} {seconds:8.2f} s  calls {s.llm_calls:5d}  "
                f"prompt {s.prompt_tokens:8d}  cached {s.cached_prompt_tokens:8d}  hit {s.prefix_hit_rate:.1%}")
    spark_mode.stop(spark)
    if args.analyze:
        import shutil

        spark.sql("DROP TABLE beer")
        shutil.rmtree(where.parent, ignore_errors=True)
    spark.stop()

    # DuckDB, same checkpoint, same options and prompt layout, an in-process engine: the reference time
    duck = {k: v for k, v in DUCKDB.items() if k in wanted_c}
    if duck:
        import duckdb

        con = duckdb.connect()
        counts = load_tables(con, duck_qs, rows, 0)
        dconfigs = {}
        for ours, theirs in duck.items():
            c = DUCKDB_CONFIGS[theirs]
            dconfigs[ours] = dict(c, options=dict(c["options"], **layout))
        results += run_queries(con, duck_qs, counts, model, dconfigs, kv_cache_memory=args.kv_cache_memory,
                               max_tokens=args.max_tokens, chat=False, tag="duckdb ")

    by = {(r["query"], r["config"]): r for r in results}
    summary = []
    for qname in qs:
        runs = {c: by[(qname, c)] for c in [*configs, *duck] if (qname, c) in by}
        row = dict(query=qname, rows=n)
        for c, r in runs.items():
            row[f"{c}_s"] = r["seconds"]
        on = runs.get("rules_on")
        if on:
            row["tokens_per_prompt"] = on["tokens_per_prompt"]
            for base in ("rules_off", "no_cache"):
                if base in runs:
                    row[f"speedup_vs_{base}"] = round(runs[base]["seconds"] / on["seconds"], 2) if on["seconds"] else None
            if "duckdb" in runs:
                row["rules_on_over_duckdb"] = round(on["seconds"] / runs["duckdb"]["seconds"], 2)
        rows_on = runs.get("rules_on_rows")
        if rows_on and "rules_off" in runs:
            row["rows_only_speedup_vs_rules_off"] = round(runs["rules_off"]["seconds"] / rows_on["seconds"], 2)
        if rows_on and "duckdb_rows" in runs:
            row["rules_on_rows_over_duckdb_rows"] = round(rows_on["seconds"] / runs["duckdb_rows"]["seconds"], 2)
        for c, r in runs.items():
            row[f"hit_{c}"] = r["hit_rate"]
            if r.get("ideal_tokens") is not None:
                row[f"ideal_{c}"] = r["ideal_tokens"]
        row["calls_on"] = on["llm_calls"] if on else None
        row["calls_off"] = runs["rules_off"]["llm_calls"] if "rules_off" in runs else None
        summary.append(row)
    aims = {q["query"]: dict(rows_at_least_2000=n >= 2000,
                             speedup_vs_rules_off_ge_2=(q.get("speedup_vs_rules_off") or 0) >= 2.0,
                             within_1_2x_of_duckdb=(q.get("rules_on_over_duckdb") or 99) <= 1.2,
                             hit_rate_ge_80=(q.get("hit_rules_on") or 0) >= 0.80) for q in summary}
    note = model_note(model, args.model, args.size, args.tokenizer)
    data = dict(benchmark="spark_queries", model=model,
                model_note=note + ": answers are nonsense, only the mechanisms and timings are meaningful",
                tokenizer=None if args.model else args.tokenizer, chat_template_head=not args.no_chat,
                master=args.master, catalyst_extension=extension, partitions=partitions, analyzed=args.analyze,
                max_tokens=args.max_tokens, kv_cache_memory=args.kv_cache_memory,
                configs={**{k: dict(prefix_cache=v["prefix_cache"], llm_sql_optimize=v["optimize"], **v["options"])
                            for k, v in configs.items()},
                         **{k: dict(duckdb=True, same_as=f"llm_sql_queries {v}") for k, v in duck.items()}},
                queries=qs, runs=results, summary=summary, aims=aims,
                total_seconds=round(time.perf_counter() - t0, 1))
    write_json(data, args.out, "spark_queries")
    allc = [*configs, *duck]
    heads = ["query", "rows", "tokens_per_prompt"] + [f"{c}_s" for c in allc] + [
        h for h in ("speedup_vs_rules_off", "speedup_vs_no_cache", "rows_only_speedup_vs_rules_off",
                    "rules_on_over_duckdb", "rules_on_rows_over_duckdb_rows") if any(h in r for r in summary)]
    print_table(heads, summary, title="LLM-SQL in Spark (local[2]) and DuckDB, same checkpoint, same run "
                                      "(random-weight model: answers are nonsense, timings and hits are real)")
    print_table(["query"] + [f"hit_{c}" for c in allc if c != "no_cache"] + [f"ideal_{c}" for c in duck],
                summary, title="Prefix hits measured by the engine (ideal: DuckDB's prompts under a cache that never "
                               "evicts, the ceiling of any row order)")
    save_bar_chart({r["query"]: {c: r[f"{c}_s"] for c in allc if f"{c}_s" in r} for r in summary},
                   ylabel="seconds", title=f"LLM-SQL in Spark and DuckDB, {n} beer rows (tiny random Llama, "
                                           f"{args.tokenizer} vocabulary, CPU)",
                   out=args.out, name="spark_queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
