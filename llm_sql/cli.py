"""``llm-sql`` command line: a thin layer over the packages (argument parsing, exit codes).

Progress and errors go to stderr, results to stdout. A user error (missing model
directory, bad option value) is one line and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llm_sql.config import check_model_dir
from llm_sql.display import format_result


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


def _engine_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"device": args.device}
    if getattr(args, "dtype", None):
        kwargs["dtype"] = args.dtype
    if getattr(args, "kv_cache_memory", None):
        kwargs["kv_cache_memory"] = args.kv_cache_memory
    if getattr(args, "no_prefix_caching", False):
        kwargs["enable_prefix_caching"] = False
    if getattr(args, "swap_space", None):
        kwargs["swap_space"] = args.swap_space
    if getattr(args, "preemption", None):
        kwargs["preemption"] = args.preemption
    if getattr(args, "speculative", None):
        kwargs["speculative"] = args.speculative
    return kwargs


def cmd_serve(args: argparse.Namespace) -> int:
    model = check_model_dir(args.model)  # before the heavy imports: a typo fails fast
    from engine_backend.server import serve

    api_key = args.api_key or os.environ.get("LLM_SQL_API_KEY") or None
    serve(model, host=args.host, port=args.port, api_key=api_key, **_engine_kwargs(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from llm_sql.demo import run_demo
    from llm_sql.models import default_demo_model

    model = check_model_dir(args.model) if args.model else str(default_demo_model())
    csv = args.csv
    if csv is not None and not Path(csv).expanduser().is_file():
        raise UsageError(f"CSV file not found: {csv}")
    if args.rows < 1 or args.sample < 1:
        raise UsageError("--rows and --sample must be at least 1")
    return run_demo(model, csv=csv, rows=args.rows, sample=args.sample, **_engine_kwargs(args))


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    import llm_sql

    options: dict = {"optimize": not args.no_optimize, "cache": not args.no_cache, "progress": not args.no_progress}
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    if args.base_url:
        if args.model:
            options["model"] = args.model  # the model name on the server
        options.update(backend="openai", base_url=args.base_url, api_key=args.api_key)
    else:
        if args.model:
            options["model"] = check_model_dir(args.model)
        options.update(_engine_kwargs(args))
    con = duckdb.connect()
    try:
        db = llm_sql.register(con, **options)
        if args.explain or args.analyze:
            print(llm_sql.explain(db, args.sql, analyze=args.analyze))
            return 0
        rel = db.sql(args.sql)
        if rel is not None:
            print(format_result(list(rel.columns), rel.fetchall(), max_rows=args.max_rows))
        if args.stats:
            print()
            print(llm_sql.last_stats(db).summary())
        return 0
    except duckdb.Error as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    finally:
        con.close()


def build_parser() -> argparse.ArgumentParser:
    from llm_sql import __version__

    parser = argparse.ArgumentParser(prog="llm-sql", description="LLM functions inside SQL analytics.")
    parser.add_argument("--version", action="version", version=f"llm-sql {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def engine_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the engine runs (cpu)")
        p.add_argument("--dtype", default=None, help="auto, float32, float16 or bfloat16 (default: float32 on CPU)")
        p.add_argument("--kv-cache-memory", default=None, metavar="SIZE",
                       help="KV-cache budget, e.g. 512MB or 2GiB (default: sized by the engine)")
        p.add_argument("--no-prefix-caching", action="store_true", help="disable the prefix (KV) cache")
        p.add_argument("--swap-space", default=None, metavar="SIZE",
                       help="host KV tier for swapped requests and evicted prefix blocks, e.g. 4GiB "
                            "(default: 4GiB on cuda, none on cpu)")
        p.add_argument("--preemption", choices=["auto", "swap", "recompute"], default=None,
                       help="what a preempted request does with its KV pages (default: auto)")
        p.add_argument("--speculative", default=None, metavar="METHOD|JSON",
                       help="speculative decoding: ngram, batch, or JSON such as "
                            "'{\"method\": \"draft\", \"draft_model\": \"DIR\"}' (default: off)")

    serve = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    serve.add_argument("--model", required=True, metavar="DIR", help="a local Hugging Face model directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None,
                       help="bearer token clients must send (default: $LLM_SQL_API_KEY, else a generated one)")
    engine_options(serve)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run an LLM filter query on the embedded engine and show what the "
                                       "optimiser saves")
    demo.add_argument("--model", default=None, metavar="DIR",
                      help="a local model directory (default: a tiny random model, created once)")
    demo.add_argument("--csv", default=None, metavar="PATH",
                      help="run the filter over this CSV (every column read as text) instead of the built-in table")
    demo.add_argument("--rows", type=int, default=256, help="rows of the table to use (default 256)")
    demo.add_argument("--sample", type=int, default=128,
                      help="rows for the optimised-vs-unoptimised timing (default 128)")
    engine_options(demo)
    demo.set_defaults(func=cmd_demo)

    query = sub.add_parser("query", help="run a SQL query with LLM functions over CSV/Parquet files (DuckDB)",
                           description="Files are read by path in FROM, e.g. FROM 'data.csv' or "
                                       "read_csv('data.csv', all_varchar=true).")
    query.add_argument("sql", help="the query")
    query.add_argument("--model", default=None, metavar="DIR",
                       help="a local model directory (default: a tiny random model that answers nonsense); "
                            "with --base-url, the model name on the server")
    query.add_argument("--base-url", default=None, metavar="URL", help="an OpenAI-compatible server instead of "
                                                                        "the embedded engine")
    query.add_argument("--api-key", default=None, help="bearer token for --base-url (default: $LLM_SQL_API_KEY)")
    query.add_argument("--explain", action="store_true",
                       help="print the plan and each LLM stage's estimates (rows, distinct inputs, tokenised prompt "
                            "tokens, expected prefix hits, generated tokens, seconds) without calling the LLM")
    query.add_argument("--analyze", action="store_true",
                       help="run the query and print the plan with each stage's estimates beside its actual "
                            "figures (the result rows are not printed)")
    query.add_argument("--stats", action="store_true", help="print the run statistics after the results")
    query.add_argument("--no-optimize", action="store_true",
                       help="no rewriting: every call per row through the fallback UDF, no dedup or reordering")
    query.add_argument("--no-cache", action="store_true", help="do not read or write the persistent result cache")
    query.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    query.add_argument("--max-tokens", type=int, default=None, help="longest llm() answer (default 32)")
    query.add_argument("--max-rows", type=int, default=50, help="rows to print (default 50)")
    engine_options(query)
    query.set_defaults(func=cmd_query)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"llm-sql: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a bad option value the engine rejected (dtype, memory size, ...)
        if os.environ.get("LLM_SQL_DEBUG"):
            raise
        print(f"llm-sql: error: {exc} (set LLM_SQL_DEBUG=1 for a traceback)", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"llm-sql: error: {exc}", file=sys.stderr)
        return 2
    except TypeError as exc:  # an unknown option
        if os.environ.get("LLM_SQL_DEBUG") or "option" not in str(exc):
            raise
        print(f"llm-sql: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from engine_backend.backends import BackendError

        if isinstance(exc, BackendError) and not os.environ.get("LLM_SQL_DEBUG"):
            print(f"llm-sql: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
