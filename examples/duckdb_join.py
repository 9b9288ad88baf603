"""An LLM join in DuckDB: which beer reviews mention which flavour, asked once per distinct pair, or once per review.

    python examples/duckdb_join.py [--model DIR] [--rows N]

``JOIN flavours f ON llm_filter('...', r.review, f.flavour)`` is planned as a stage over the distinct
(review, flavour) pairs after the cheap join keys; with ``{'multi_label': true}`` each review is asked once to list
every flavour that applies (fewer calls, different prompts). Without ``--model`` the tiny random demo checkpoint
answers (nonsense; the plans and the call counts are real).
"""
from __future__ import annotations

import argparse

import duckdb
import pandas as pd

import llm_sql
from llm_sql.demo import demo_rows

FLAVOURS = [("citrus", "IPA"), ("pine", "IPA"), ("coffee", "Stout"), ("chocolate", "Stout"), ("caramel", "Amber"),
            ("cherry", "Sour")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a checkpoint folder (default: the tiny demo model)")
    ap.add_argument("--rows", type=int, default=32)
    args = ap.parse_args(argv)

    con = duckdb.connect()
    con.register("reviews", pd.DataFrame(demo_rows(args.rows), columns=["id", "brewery", "style", "review", "stars"]))
    con.register("flavours", pd.DataFrame(FLAVOURS, columns=["flavour", "style"]))
    db = llm_sql.register(con, model=args.model, cache=False, progress=False)

    join = ("SELECT r.id, f.flavour FROM reviews r JOIN flavours f "
            "ON r.style = f.style AND llm_filter('Does the review mention this flavour?', r.review, f.flavour{opts}) "
            "ORDER BY r.id, f.flavour")
    print(llm_sql.explain(con, join.format(opts="")))
    pairs = db.sql(join.format(opts="")).fetchall()
    s = llm_sql.last_stats(con)
    print(f"pairwise: {len(pairs)} matches, {s.llm_calls} LLM calls for {s.stages[0]['rows_in']} joined pairs")
    multi = db.sql(join.format(opts=", {'multi_label': true}")).fetchall()
    s = llm_sql.last_stats(con)
    print(f"multi-label: {len(multi)} matches, {s.llm_calls} LLM calls (one per distinct review)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
