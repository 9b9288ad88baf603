"""``llm-sql`` command line: a thin layer over the packages (argument parsing, exit codes).

Progress and errors go to stderr, results to stdout. A user error (missing model
directory, bad option value) is one line and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


def _model_dir(path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(f"model directory not found: {path}")
    if not (p / "config.json").is_file():
        raise UsageError(f"not a Hugging Face model directory (no config.json): {path}")
    return str(p)


def _engine_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"device": args.device}
    if getattr(args, "dtype", None):
        kwargs["dtype"] = args.dtype
    if getattr(args, "kv_cache_memory", None):
        kwargs["kv_cache_memory"] = args.kv_cache_memory
    if getattr(args, "no_prefix_caching", False):
        kwargs["enable_prefix_caching"] = False
    return kwargs


def cmd_serve(args: argparse.Namespace) -> int:
    model = _model_dir(args.model)  # before the heavy imports: a typo fails fast
    from engine_backend.server import serve

    api_key = args.api_key or os.environ.get("LLM_SQL_API_KEY") or None
    serve(model, host=args.host, port=args.port, api_key=api_key, **_engine_kwargs(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from llm_sql.demo import default_demo_model, run_demo

    model = _model_dir(args.model) if args.model else str(default_demo_model())
    return run_demo(model, **_engine_kwargs(args))


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

    serve = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    serve.add_argument("--model", required=True, metavar="DIR", help="a local Hugging Face model directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None,
                       help="bearer token clients must send (default: $LLM_SQL_API_KEY, else a generated one)")
    engine_options(serve)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run the embedded engine on a batch of prompts with a shared prefix")
    demo.add_argument("--model", default=None, metavar="DIR",
                      help="a local model directory (default: a tiny random model, created once)")
    engine_options(demo)
    demo.set_defaults(func=cmd_demo)
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
