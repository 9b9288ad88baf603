"""The published LLM-SQL query types, end to end through DuckDB, in three configurations measured in one run.

Queries (arXiv 2403.05821's workload) on ``../shared/data/llmsql/beer.csv`` and ``movies_small.csv``, every
column read as text (``all_varchar=true``):

- filter:      ``SELECT ... WHERE llm_filter(instruction, <all fields>)``
- projection:  ``SELECT llm(instruction, <all fields>) FROM t``
- multi:       an LLM filter, then an LLM projection on the rows it keeps
- aggregation: ``SELECT key, AVG(llm_score(instruction, <fields>)) FROM t GROUP BY key``

Configurations, each on a fresh engine prefix cache and with the persistent result cache OFF:

- ``no_cache``:       no prefix cache, original order (``optimize=False``: per-row UDF, no dedup, no reordering)
- ``cache_original``: prefix cache, original order, no dedup (``optimize=False``)
- ``optimized``:      prefix cache, full optimisation (rewriting, dedup, reordering of rows and of the fields
                      inside each prompt: ``reorder_fields=True``)

The model is a random-weight Llama made by ``make_tiny_model`` (hidden 256, 4 layers, a few million parameters;
``--size 24m``: hidden 512, 8 layers) so that a run takes minutes on a CPU; its answers are nonsense, the work
(tokens, prefix hits, time) is real. On a model this small the fixed cost per request weighs more than on a
real one, so the runtime ratios understate what the saved prefill tokens are worth on a large model.

    python bench/llm_sql_queries.py [--quick] [--rows N] [--model DIR | --size tiny|24m] [--queries beer_filter,...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LLAMA_24M, REPO, checkpoint_dir, log, print_table, save_bar_chart, write_json  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "llmsql"
TINY = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            intermediate_size=704, max_position_embeddings=4096)

# Every column, in the CSV's order (the published setup: the original field order is the table's).
BEER_FIELDS = ['"review/profileName"', '"review/time"', '"review/overall"', '"review/taste"', '"review/palate"',
               '"review/appearance"', '"beer/name"', '"beer/style"', '"beer/beerId"']
MOVIE_FIELDS = ["rotten_tomatoes_link", "review_content", "movie_title", "movie_info", "id"]


def queries(beer_rows: int, movie_rows: int) -> dict[str, dict]:
    bf, mf = ", ".join(BEER_FIELDS), ", ".join(MOVIE_FIELDS)
    beer_f = "Based on the beer descriptions, does this beer have European origin? Answer yes or no."
    beer_p = "Based on the beer review, describe the flavour profile of the beer in a few words."
    movie_f = "Given the following fields of a movie description and a user review, is the review positive?"
    movie_p = "Given information including movie descriptions and critic reviews, summarise the appeal of the movie."
    return {
        "beer_filter": dict(table="beer", rows=beer_rows,
                            sql=f"SELECT \"beer/name\" FROM beer WHERE llm_filter('{beer_f}', {bf})"),
        "beer_projection": dict(table="beer", rows=beer_rows, sql=f"SELECT llm('{beer_p}', {bf}) AS d FROM beer"),
        "beer_multi": dict(table="beer", rows=beer_rows,
                           sql=f"SELECT llm('{beer_p}', {bf}) AS d FROM beer WHERE llm_filter('{beer_f}', {bf})"),
        "beer_aggregation": dict(table="beer", rows=beer_rows, sql=(
            f"SELECT \"beer/style\", AVG(llm_score('Rate how much the reviewer liked this beer.', {bf})) AS s "
            f"FROM beer GROUP BY \"beer/style\"")),
        "movies_filter": dict(table="movies", rows=movie_rows,
                              sql=f"SELECT movie_title FROM movies WHERE llm_filter('{movie_f}', {mf})"),
        "movies_projection": dict(table="movies", rows=movie_rows,
                                  sql=f"SELECT llm('{movie_p}', {mf}) AS d FROM movies"),
        "movies_multi": dict(table="movies", rows=movie_rows, sql=(
            f"SELECT llm('{movie_p}', {mf}) AS d FROM movies WHERE llm_filter('{movie_f}', {mf})")),
        "movies_aggregation": dict(table="movies", rows=movie_rows, sql=(
            f"SELECT movie_title, AVG(llm_score('Rate the sentiment of the review.', {mf})) AS s "
            f"FROM movies GROUP BY movie_title")),
    }


CONFIGS = {
    "no_cache": dict(prefix_cache=False, options=dict(optimize=False)),
    "cache_original": dict(prefix_cache=True, options=dict(optimize=False)),
    # full optimisation: GGR-style row AND per-row field order (reorder_fields; udf's default keeps the written
    # field order so that answers equal the plain run's)
    "optimized": dict(prefix_cache=True, options=dict(optimize=True, reorder_fields=True)),
}


SIZES = {"tiny": ("llama-tiny-256x4", TINY), "24m": ("llama-24m", LLAMA_24M)}


def model_dir(arg: str | None, size: str = "tiny") -> str:
    if arg:
        return arg
    name, config = SIZES[size]
    path = checkpoint_dir(name)
    if not (path / "config.json").is_file():
        from engine_backend.testing import make_tiny_model

        log(f"creating {path}")
        make_tiny_model(path, arch="llama", **config)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 rows a table: a smoke run")
    ap.add_argument("--rows", type=int, default=None, help="rows of beer.csv (default 2000; movies: all 1019)")
    ap.add_argument("--movie-rows", type=int, default=None)
    ap.add_argument("--model", default=None, metavar="DIR", help="a model directory (default: tiny random Llama)")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny",
                    help="the random checkpoint without --model: tiny (hidden 256, 4 layers) or 24m (hidden 512, 8 layers)")
    ap.add_argument("--queries", default=None, help="comma-separated subset, e.g. beer_filter")
    ap.add_argument("--max-tokens", type=int, default=8, help="longest llm() answer (default 8)")
    ap.add_argument("--kv-cache-memory", default="2GB")
    ap.add_argument("--block-size", type=int, default=16, help="tokens per KV page (the prefix-hit granularity)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)

    import duckdb

    import llm_sql
    from engine_backend.backends import make_backend

    beer_rows = args.rows or (200 if args.quick else 2000)
    movie_rows = args.movie_rows or (200 if args.quick else 100_000)
    qs = queries(beer_rows, movie_rows)
    if args.queries:
        wanted = args.queries.split(",")
        unknown = [q for q in wanted if q not in qs]
        if unknown:
            ap.error(f"unknown queries {unknown}; choose from {', '.join(qs)}")
        qs = {k: qs[k] for k in wanted}
    model = model_dir(args.model, args.size)
    log(f"model {model}")

    con = duckdb.connect()
    for table, csv, rows in (("beer", "beer.csv", beer_rows), ("movies", "movies_small.csv", movie_rows)):
        if any(q["table"] == table for q in qs.values()):
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_csv('{DATA / csv}', all_varchar=true) "
                        f"LIMIT {int(rows)}")
    counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchall()[0][0]
              for t in ("beer", "movies") if any(q["table"] == t for q in qs.values())}
    log(f"tables {counts}")

    engines = {}
    for pc in (False, True):
        engines[pc] = make_backend("embedded", model=model, kv_cache_memory=args.kv_cache_memory,
                                   enable_prefix_caching=pc, block_size=args.block_size)
        engines[pc].generate([])  # nothing: loading is not timed
    results = []
    for qname, q in qs.items():
        for cname, cfg in CONFIGS.items():
            backend = engines[cfg["prefix_cache"]]
            backend.engine.reset_prefix_cache()
            db = llm_sql.register(con, backend=backend, cache=False, progress=False, max_tokens=args.max_tokens,
                                  **cfg["options"])
            start = time.perf_counter()
            out = db.sql(q["sql"]).fetchall()
            seconds = time.perf_counter() - start
            s = llm_sql.last_stats(con)
            row = dict(query=qname, config=cname, rows=counts[q["table"]], result_rows=len(out),
                       seconds=round(seconds, 3), llm_calls=s.llm_calls, prompt_tokens=s.prompt_tokens,
                       cached_prompt_tokens=s.cached_prompt_tokens, hit_rate=round(s.prefix_hit_rate, 4),
                       generated_tokens=s.generated_tokens, solve_seconds=round(s.solve_seconds, 4),
                       llm_seconds=round(s.llm_seconds, 3), errors=s.errors)
            results.append(row)
            log(f"{qname:20s} {cname:15s} {seconds:8.2f} s  calls {s.llm_calls:5d}  hit {s.prefix_hit_rate:.1%}")
    for backend in engines.values():
        backend.close()

    by = {(r["query"], r["config"]): r for r in results}
    summary = []
    for qname in qs:
        nc, co, op = by[(qname, "no_cache")], by[(qname, "cache_original")], by[(qname, "optimized")]
        summary.append(dict(query=qname, rows=op["rows"], no_cache_s=nc["seconds"], cache_original_s=co["seconds"],
                            optimized_s=op["seconds"],
                            speedup_vs_no_cache=round(nc["seconds"] / op["seconds"], 2) if op["seconds"] else None,
                            speedup_vs_cache_original=round(co["seconds"] / op["seconds"], 2) if op["seconds"] else None,
                            hit_original=co["hit_rate"], hit_optimized=op["hit_rate"],
                            calls_original=co["llm_calls"], calls_optimized=op["llm_calls"],
                            solve_s=op["solve_seconds"]))
    aims = None
    if "beer_filter" in qs:
        b = next(r for r in summary if r["query"] == "beer_filter")
        aims = dict(rows=b["rows"], rows_at_least_2000=b["rows"] >= 2000, hit_rate_ge_80=b["hit_optimized"] >= 0.80,
                    speedup_vs_cache_original_ge_2=(b["speedup_vs_cache_original"] or 0) >= 2.0,
                    speedup_vs_no_cache_ge_3_8=(b["speedup_vs_no_cache"] or 0) >= 3.8)
    note = args.model or {"tiny": "random-weight Llama (make_tiny_model, hidden 256, 4 layers)",
                          "24m": "random-weight Llama (make_tiny_model, hidden 512, 8 layers, about 24M parameters)"}[args.size]
    data = dict(benchmark="llm_sql_queries", model=model, model_note=note + ": answers are nonsense, the work is real",
                max_tokens=args.max_tokens,
                configs={k: dict(prefix_cache=v["prefix_cache"], **v["options"], result_cache=False)
                         for k, v in CONFIGS.items()},
                runs=results, summary=summary, beer_filter_aims=aims)
    write_json(data, args.out, "llm_sql_queries")
    print_table(["query", "rows", "no_cache_s", "cache_original_s", "optimized_s", "speedup_vs_no_cache",
                 "speedup_vs_cache_original", "hit_original", "hit_optimized", "calls_original", "calls_optimized",
                 "solve_s"], summary, title="LLM-SQL queries: three configurations, same engine, same run")
    save_bar_chart({r["query"]: {"no prefix cache": r["no_cache_s"], "cache, original order": r["cache_original_s"],
                                 "optimised": r["optimized_s"]} for r in summary},
                   ylabel="seconds", title="LLM-SQL queries (tiny random Llama, CPU)", out=args.out,
                   name="llm_sql_queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
