"""LLM functions on a pandas DataFrame: ``df.llm.filter``, ``.classify``, ``.score``, ``.map``, and the same on Modin.

    python examples/pandas_reviews.py [--model DIR] [--rows N] [--modin]

Without ``--model`` the tiny random demo checkpoint answers (nonsense; the mechanism — dedup, reordering,
prefix-cache hits — is real). ``--modin`` runs the same calls on a ``modin.pandas`` frame (``pip install modin``;
the local engine unless ``MODIN_ENGINE`` says otherwise): its row partitions go through the one engine in turn.
"""
from __future__ import annotations

import argparse
import os

import pandas as pd

import llm_sql
import llm_sql.pandas  # noqa: F401 - registers the df.llm accessor
from llm_sql.demo import demo_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a checkpoint folder (default: the tiny demo model)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--modin", action="store_true", help="use a modin.pandas DataFrame")
    args = ap.parse_args(argv)

    llm_sql.pandas.configure(model=args.model, cache=False, progress=False, max_tokens=8)
    reviews = pd.DataFrame(demo_rows(args.rows), columns=["id", "brewery", "style", "review", "stars"])
    if args.modin:
        os.environ.setdefault("MODIN_ENGINE", "Python")
        import modin.pandas as mpd

        reviews = mpd.DataFrame(reviews)

    positive = reviews[reviews.stars >= 3].llm.filter("Is this beer review positive?", "review")
    stats = llm_sql.last_stats(positive)
    print(f"{len(positive)} positive reviews among those with 3+ stars; {stats.llm_calls} LLM calls for "
          f"{stats.rows_in} rows")

    tasted = reviews.head(5).llm.classify("review", labels=["fruity", "bitter", "malty"], into="taste")
    for style, taste in zip(tasted["style"], tasted["taste"]):
        print(f"  {style:12s} -> {taste}")

    scored = reviews.llm.score("How much did the reviewer like it?", "review", into="score")
    print(scored.groupby("style")["score"].mean().sort_index().round(2).to_string())

    summaries = reviews.head(3).llm.map("Summarise the review in a few words", "style", "review", into="summary")
    print(summaries[["id", "summary"]].to_string(index=False))
    print(llm_sql.last_stats(summaries).summary())
    llm_sql.pandas.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
