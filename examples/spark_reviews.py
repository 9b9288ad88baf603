"""LLM functions in Spark SQL and the DataFrame API, with the Catalyst rules shown in the plan.

    python examples/spark_reviews.py [--model DIR] [--master local[2]]

``llm_sql.spark_session`` builds a session with the llm-sql Catalyst extension (compiled with javac on first
use), starts one engine server for the machine and registers the functions. Without ``--model`` the tiny
random demo checkpoint answers (nonsense; the mechanism is real).
"""
from __future__ import annotations

import argparse

import llm_sql
from llm_sql import spark_mode
from llm_sql.demo import demo_rows
from llm_sql.functions import llm_filter, llm_score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a checkpoint folder (default: the tiny demo model)")
    ap.add_argument("--master", default="local[2]")
    args = ap.parse_args(argv)

    spark = llm_sql.spark_session(model=args.model, master=args.master, cache=False, max_tokens=8,
                                  conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                                        "spark.sql.shuffle.partitions": "2"})
    spark.sparkContext.setLogLevel("ERROR")
    reviews = spark.createDataFrame(demo_rows(64), "id int, brewery string, style string, review string, stars int")
    reviews.createOrReplaceTempView("reviews")

    sql = ("SELECT id, llm('Summarise in three words', struct(style, review)) AS summary FROM reviews "
           "WHERE stars >= 3 AND llm_filter('Is this beer review positive?', struct(review))")
    print(spark.sql("EXPLAIN " + sql).collect()[0][0])  # dedup aggregate, range partitioning, sorts, cheap filter first
    print(f"{spark.sql(sql).count()} positive reviews with 3+ stars summarised")

    by_style = (reviews.where(llm_filter("Does the review mention the taste?", "review"))
                .groupBy("style").agg({"stars": "avg"}).orderBy("style"))
    by_style.show()
    reviews.select("style", llm_score("How much did the reviewer like it?", "review").alias("score")).show(5)
    print(llm_sql.last_stats(spark).summary())
    spark_mode.stop(spark)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
