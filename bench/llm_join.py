"""An LLM join: movie reviews x a small table of genres, the plain nested loop against the optimised join, same run.

``SELECT m.id, g.genre FROM movies m JOIN genres g ON llm_filter('Does the review suggest the movie is of this
genre?', m.review_content, g.genre)`` over reviews of ``../shared/data/llmsql/movies_small.csv`` (many movies have
several reviews, and some reviews repeat) and eight genres, on the embedded engine (a 24M-parameter Llama with a
random-weight checkpoint: its answers are nonsense, what is measured is the work).

* **nested loop**: ``optimize=False``: DuckDB calls the UDF on every (review, genre) pair it joins (the UDF still
  deduplicates inside each chunk DuckDB hands it);
* **optimised**: the rewriter moves the LLM condition to a stage over the distinct pairs (``optimizer/rules/joins.py``),
  rows ordered so each review is the shared prefix of its genres' prompts.

* **multi-label** (opt-in: ``{'multi_label': true}``, ``udf/multi_label.py``): one call per distinct review lists
  the genres that apply, decoded under a schema whose items are the genre names. It changes the prompts, so its
  rows may differ (with random weights they do); what it saves is calls.

Reported: LLM calls against the n x m pairs, prompt tokens, the prefix-cache hit rate, seconds, and whether the
joined rows equal the nested loop's.

    python bench/llm_join.py              # 120 reviews x 8 genres, a few minutes on 2 cores
    python bench/llm_join.py --quick      # a smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import LLAMA_24M, REPO, checkpoint_dir, log, print_table, save_bar_chart, write_json  # noqa: E402

import duckdb  # noqa: E402

import llm_sql  # noqa: E402
from engine_backend.testing import make_tiny_model  # noqa: E402

MOVIES = REPO.parent / "shared" / "data" / "llmsql" / "movies_small.csv"
GENRES = ["comedy", "drama", "horror", "action", "romance", "documentary", "animation", "thriller"]
QUERY = ("SELECT m.id, g.genre FROM movies m JOIN genres g ON llm_filter('Does the review suggest the movie is of "
         "this genre?', m.review_content, g.genre) ORDER BY m.id, g.genre")


def run(con, model_dir: str, optimize: bool, query: str = QUERY) -> tuple[list, dict]:
    db = llm_sql.register(con, model=model_dir, cache=False, progress=False, optimize=optimize)
    db.session.backend.engine.reset_prefix_cache()
    start = time.perf_counter()
    rows = db.sql(query).fetchall()
    seconds = time.perf_counter() - start
    s = llm_sql.last_stats(con)
    return rows, {"seconds": seconds, "llm_seconds": s.llm_seconds, "llm_calls": s.llm_calls,
                  "prompt_tokens": s.prompt_tokens, "prefix_hit_rate": s.prefix_hit_rate, "rows_out": len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=120)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    if not MOVIES.is_file():
        print(f"bench/llm_join.py needs {MOVIES}", file=sys.stderr)
        return 2
    dims, name, genres = dict(LLAMA_24M), "join-24m", GENRES
    if args.quick:
        args.reviews, genres = 12, GENRES[:3]
        dims, name = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128), "join-quick"
    model_dir = checkpoint_dir(name)
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, arch="llama", **dims)
    con = duckdb.connect()
    con.execute(f"CREATE TABLE movies AS SELECT id, review_content FROM read_csv_auto('{MOVIES}') "
                f"WHERE review_content IS NOT NULL AND length(review_content) > 0 ORDER BY id LIMIT {args.reviews}")
    con.execute("CREATE TABLE genres (genre VARCHAR)")
    con.executemany("INSERT INTO genres VALUES (?)", [(g,) for g in genres])
    (n, distinct), = con.sql("SELECT count(*), count(DISTINCT review_content) FROM movies").fetchall()
    pairs = n * len(genres)
    run(con, str(model_dir), True)  # warm-up (not timed)
    plain_rows, plain = run(con, str(model_dir), False)
    log(f"nested loop: {plain['seconds']:.1f}s, {plain['llm_calls']} calls")
    rows, opt = run(con, str(model_dir), True)
    log(f"optimised: {opt['seconds']:.1f}s, {opt['llm_calls']} calls")
    multi_rows, multi = run(con, str(model_dir), True,
                            QUERY.replace("g.genre)", "g.genre, {'multi_label': true, 'max_tokens': 64})"))
    log(f"multi-label: {multi['seconds']:.1f}s, {multi['llm_calls']} calls")
    multi["rows_equal_nested_loop"] = multi_rows == plain_rows
    results = {"nested loop": plain, "optimised": opt, "multi-label": multi}
    print_table(["plan", "LLM calls", "of n x m", "prompt tokens", "prefix hit", "seconds", "speed-up"],
                [[k, r["llm_calls"], f"{r['llm_calls'] / pairs:.0%}", r["prompt_tokens"], f"{r['prefix_hit_rate']:.1%}",
                  f"{r['seconds']:.2f}", f"{plain['seconds'] / r['seconds']:.2f}x"] for k, r in results.items()],
                title=f"{n} reviews ({distinct} distinct) x {len(genres)} genres = {pairs} pairs ({model_dir.name})")
    print(f"rows equal: {rows == plain_rows}; optimised / nested loop time: {opt['seconds'] / plain['seconds']:.3f}")
    write_json({"reviews": n, "distinct_reviews": distinct, "genres": len(genres), "pairs": pairs,
                "results": results, "rows_equal": rows == plain_rows,
                "speedup": plain["seconds"] / opt["seconds"]}, args.out, "llm_join")
    save_bar_chart({k: {"seconds": r["seconds"]} for k, r in results.items()}, "seconds",
                   "LLM join: nested loop vs optimised", args.out, "llm_join")
    return 0 if rows == plain_rows else 1


if __name__ == "__main__":
    sys.exit(main())
