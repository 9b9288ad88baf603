"""LLM functions in DuckDB: a filter, a classification, and an average score per style.

    python examples/duckdb_reviews.py [--model DIR] [--rows N]

Without ``--model`` the tiny random demo checkpoint answers (nonsense; the mechanism — dedup, reordering,
prefix-cache hits — is real). Point ``--model`` at a real Hugging Face checkpoint folder for real answers.
"""
from __future__ import annotations

import argparse

import duckdb
import pandas as pd

import llm_sql
from llm_sql.demo import demo_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a checkpoint folder (default: the tiny demo model)")
    ap.add_argument("--rows", type=int, default=64)
    args = ap.parse_args(argv)

    con = duckdb.connect()
    reviews = pd.DataFrame(demo_rows(args.rows), columns=["id", "brewery", "style", "review", "stars"])
    con.register("reviews", reviews)
    db = llm_sql.register(con, model=args.model, cache=False, progress=False, max_tokens=8)

    positive = db.sql("SELECT id, style, review FROM reviews "
                      "WHERE stars >= 3 AND llm_filter('Is this beer review positive?', review)").fetchall()
    print(f"{len(positive)} positive reviews among those with 3+ stars; "
          f"{llm_sql.last_stats(con).llm_calls} LLM calls for {args.rows} rows")

    labels = db.sql("SELECT style, llm_classify(review, ['fruity', 'bitter', 'malty']) AS taste "
                    "FROM reviews LIMIT 5").fetchall()
    for style, taste in labels:
        print(f"  {style:12s} -> {taste}")

    scores = db.sql("SELECT style, AVG(llm_score('How much did the reviewer like it?', review)) AS score "
                    "FROM reviews GROUP BY style ORDER BY style").fetchall()
    for style, score in scores:
        print(f"  {style:12s} {score:.2f}")
    print(llm_sql.explain(con, "SELECT id FROM reviews WHERE llm_filter('Positive?', style, review)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
