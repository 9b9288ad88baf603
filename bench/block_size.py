"""KV block size: prefix hit rate and throughput of the LLM filter on beer at 16 tokens a block and smaller.

The engine's prefix cache reuses whole blocks, so a prompt's hit stops at the last full block it shares with an
earlier prompt: smaller blocks hit more, but each block is a page to allocate, hash and attend over. For each
``--blocks`` size the DuckDB benchmark's beer filter (``bench/llm_sql_queries.py``: same checkpoint with a real
vocabulary, chat template, result cache off) runs with the original order and optimised, on a fresh engine;
the engine's measured hit rate and seconds are reported, and for every ``--ideal-blocks`` size the ceiling a
cache that never evicts would reach on the very prompts sent (any row order reaches the same ceiling).

    python bench/block_size.py [--quick] [--rows 2000] [--blocks 16,8,4] [--ideal-blocks 64,32,16,8,4,2,1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, print_table, save_png, pyplot, write_json  # noqa: E402
from llm_sql_queries import (CONFIGS, DEFAULT_TOKENIZER, SIZES, TOKENIZER_CHOICES, load_tables,  # noqa: E402
                             model_dir, model_note, queries, run_queries)


class PromptsOnly:
    """A backend that records the prompts and answers " no" without running a model: only for the ceiling of
    a table too large to run here (the ceiling is a function of the prompts alone)."""

    name = "prompts-only"

    def __init__(self, layout) -> None:
        self.layout, self.prompts = layout, []

    def generate(self, requests, progress: bool = False):
        from engine_backend.backends.base import GenerationResult

        self.prompts += [self.layout(r.prompt) for r in requests]
        return [GenerationResult(text=" no", token_ids=[], finish_reason="stop", error=None, prompt_tokens=0,
                                 cached_prompt_tokens=0, completion_tokens=0) for _ in requests]

    def stats(self):
        return {}

    def close(self) -> None:
        pass


def ceiling_only(query: str, rows: int, model: str, configs: dict, blocks: list[int], max_tokens: int) -> dict:
    """{config: {block: ceiling}} over ``rows`` rows from the prompts the query would send (no model runs)."""
    import duckdb

    import llm_sql
    from engine_backend.tokenizer import Tokenizer
    from llm_sql_queries import ChatLayout
    from optimizer.metrics import token_hit_rate

    tok = Tokenizer.from_dir(model)
    qs = {query: queries(rows, 100_000)[query]}
    con = duckdb.connect()
    from llm_sql_queries import DATA

    # all of beer: DuckDB's reader rejects one row of the shipped CSV (line 23,955), skipped here
    for table, csv in (("beer", "beer.csv"), ("movies", "movies_small.csv")):
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_csv('{DATA / csv}', all_varchar=true, "
                    f"ignore_errors=true) LIMIT {int(rows)}")
    out = {}
    for cname, cfg in configs.items():
        backend = PromptsOnly(ChatLayout(tok))
        db = llm_sql.register(con, backend=backend, cache=False, progress=False, max_tokens=max_tokens,
                              **cfg["options"])
        db.sql(qs[query]["sql"]).fetchall()
        ids = tok.encode_batch(backend.prompts)
        out[cname] = {b: round(token_hit_rate(ids, b), 4) for b in blocks}
        out[cname]["prompts"] = len(ids)
        log(f"ceiling {rows} rows {cname}: {out[cname]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 rows, blocks 16 and 8: a smoke run")
    ap.add_argument("--rows", type=int, default=None, help="rows of beer.csv (default 2000)")
    ap.add_argument("--query", default="beer_filter", help="one query of bench/llm_sql_queries.py")
    ap.add_argument("--blocks", default=None, help="block sizes the engine runs at (default 16,8,4)")
    ap.add_argument("--ideal-blocks", default="64,32,16,8,4,2,1", help="block sizes for the ceiling")
    ap.add_argument("--configs", default="cache_original,optimized")
    ap.add_argument("--model", default=None, metavar="DIR")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, default=DEFAULT_TOKENIZER)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--kv-cache-memory", default="2GB")
    ap.add_argument("--ceiling-rows", type=int, default=None,
                    help="only the ceilings, over this many rows (e.g. 28479: all of beer), from the prompts alone")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)

    import duckdb

    from engine_backend.tokenizer import Tokenizer
    from optimizer.metrics import token_hit_rate

    rows = args.rows or (200 if args.quick else 2000)
    blocks = [int(b) for b in (args.blocks or ("16,8" if args.quick else "16,8,4")).split(",")]
    ideal_blocks = [int(b) for b in args.ideal_blocks.split(",")]
    all_q = queries(rows, 100_000)
    if args.query not in all_q:
        ap.error(f"unknown query {args.query}; choose from {', '.join(all_q)}")
    qs = {args.query: all_q[args.query]}
    configs = {c: CONFIGS[c] for c in args.configs.split(",")}
    model = model_dir(args.model, args.size, args.tokenizer)
    if args.ceiling_rows:
        ceil = ceiling_only(args.query, args.ceiling_rows, model, configs, ideal_blocks, args.max_tokens)
        data = dict(benchmark="block_size_ceiling", model=model, tokenizer=args.tokenizer, query=args.query,
                    rows=args.ceiling_rows, ceiling=ceil)
        write_json(data, args.out, "block_size_ceiling")
        print_table(["config", *map(str, ideal_blocks)], [[c, *(v[b] for b in ideal_blocks)] for c, v in ceil.items()],
                    title=f"Ceiling over {args.ceiling_rows} rows: block-level hit rate of the prompts, by block size")
        return 0
    tok = Tokenizer.from_dir(model)
    con = duckdb.connect()
    counts = load_tables(con, qs, rows, 100_000)
    log(f"model {model}; tables {counts}")

    runs, ideal = [], {}
    for bs in blocks:
        for r in run_queries(con, qs, counts, model, configs, block_size=bs, kv_cache_memory=args.kv_cache_memory,
                             max_tokens=args.max_tokens, keep_prompts=True, tag=f"block {bs:3d} "):
            prompts = r.pop("sent_prompts")
            if r["config"] not in ideal:  # the prompts do not depend on the block size
                ids = tok.encode_batch(prompts)
                ideal[r["config"]] = {b: round(token_hit_rate(ids, b), 4) for b in ideal_blocks}
            r["prompt_tokens_per_s"] = round(r["prompt_tokens"] / r["seconds"], 1) if r["seconds"] else None
            r["computed_tokens_per_s"] = (round((r["prompt_tokens"] - r["cached_prompt_tokens"]) / r["seconds"], 1)
                                          if r["seconds"] else None)
            runs.append(r)
    table = [dict(block_size=r["block_size"], config=r["config"], seconds=r["seconds"], hit_rate=r["hit_rate"],
                  ideal=ideal[r["config"]].get(r["block_size"]), prompt_tokens_per_s=r["prompt_tokens_per_s"],
                  computed_tokens_per_s=r["computed_tokens_per_s"]) for r in runs]
    by = {(r["block_size"], r["config"]): r for r in runs}
    for t in table:
        base = by.get((16, t["config"]))
        t["speedup_vs_block_16"] = round(base["seconds"] / t["seconds"], 2) if base and t["seconds"] else None
    data = dict(benchmark="block_size", model=model, model_note=model_note(model, args.model, args.size,
                                                                           args.tokenizer),
                tokenizer=args.tokenizer, query=args.query, rows=counts, blocks=blocks, runs=runs, table=table,
                ceiling=ideal)
    write_json(data, args.out, "block_size")
    print_table(["block_size", "config", "seconds", "speedup_vs_block_16", "hit_rate", "ideal",
                 "prompt_tokens_per_s", "computed_tokens_per_s"], table,
                title=f"{args.query}, {rows} rows: the engine at each block size (same run)")
    print_table(["config", *map(str, ideal_blocks)], [[c, *(v[b] for b in ideal_blocks)] for c, v in ideal.items()],
                title="Ceiling: block-level hit rate of the prompts sent, cache never evicting, by block size")
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for c, v in ideal.items():
        a1.plot(ideal_blocks, [v[b] for b in ideal_blocks], marker="o", label=f"{c} ceiling")
        a1.scatter([r["block_size"] for r in runs if r["config"] == c],
                   [r["hit_rate"] for r in runs if r["config"] == c], marker="x", s=60, label=f"{c} engine")
        a2.plot([r["block_size"] for r in runs if r["config"] == c],
                [r["seconds"] for r in runs if r["config"] == c], marker="o", label=c)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("block size (tokens)")
        ax.legend(fontsize=8)
    a1.set_ylabel("prefix hit rate")
    a2.set_ylabel("seconds")
    a1.set_title("hit rate")
    a2.set_title(f"{args.query}, {rows} rows")
    save_png(fig, "block_size", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
