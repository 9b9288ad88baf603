"""Read a table from SkyStore, run an LLM filter on it in DuckDB, write the result back — across two regions.

    python examples/skystore_pipeline.py [--model DIR]

Starts a real SkyStore gateway on loopback over two local-directory regions (``local_gateway``), writes the
demo reviews as Parquet through ``skystore://`` from the "us" region, reads them in DuckDB from the "eu"
region (the gateway serves them from the us copy and leaves a copy in eu, with a TTL from the prices), and
writes the LLM's answer back. Against a real deployment, run ``skystore serve --config FILE`` and pass its
endpoint and keys instead.
"""
from __future__ import annotations

import argparse

import duckdb
import fsspec
import pandas as pd

import llm_sql
from llm_sql.demo import demo_rows
from skystore_connector.testing import local_gateway

US, EU = "aws-us-east-1", "aws-eu-west-1"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a checkpoint folder (default: the tiny demo model)")
    args = ap.parse_args(argv)

    with local_gateway(regions=[US, EU]) as gw:
        def filesystem(region: str):
            return fsspec.filesystem("skystore", endpoint_url=gw.endpoint(region), key=gw.access_key,
                                     secret=gw.secret_key, skip_instance_cache=True)

        us, eu = filesystem(US), filesystem(EU)
        us.mkdir("reviews")  # a bucket, created in the writer's region
        reviews = pd.DataFrame(demo_rows(64), columns=["id", "brewery", "style", "review", "stars"])
        with us.open("reviews/all.parquet", "wb") as f:
            reviews.to_parquet(f)
        print(f"written from {US}; copies: {[r for r in (US, EU) if gw.has_copy(r, 'reviews', 'all.parquet')]}")

        con = duckdb.connect()
        con.register_filesystem(eu)
        db = llm_sql.register(con, model=args.model, cache=False, progress=False)
        db.sql("CREATE TABLE positive AS SELECT id, style, review FROM read_parquet('skystore://reviews/all.parquet') "
               "WHERE llm_filter('Is this beer review positive?', review)")
        con.execute("COPY positive TO 'skystore://reviews/positive.parquet' (FORMAT parquet)")
        gw.store.wait_for_replication()  # ranged reads (Parquet) replicate the whole object in the background
        print(f"read from {EU}; copies now: "
              f"{[r for r in (US, EU) if gw.has_copy(r, 'reviews', 'all.parquet')]}")
        back = pd.read_parquet(us.open("reviews/positive.parquet", "rb"))
        print(f"{len(back)} positive reviews written back by {EU}, read from {US}; "
              f"{llm_sql.last_stats(con).llm_calls} LLM calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
