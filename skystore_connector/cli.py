"""The ``skystore`` command: ``skystore serve --config FILE`` and ``skystore simulate ...``."""

from __future__ import annotations

import argparse
import logging
import sys

USAGE = """skystore serve --config FILE [--host HOST] [--port PORT] [--log-level LEVEL]
       skystore simulate --trace FILE --policy P ...   (skystore simulate --help for its options)
       skystore trace synth --stats FILE --part NAME --regions N --days D --out FILE ...   (--help: options)"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skystore", usage=USAGE,
                                     description="SkyStore: a multi-region S3-compatible object store with TTL "
                                                 "placement (gateway and cost simulator).")
    commands = parser.add_subparsers(dest="command", metavar="{serve,simulate,trace}")
    serve = commands.add_parser("serve", help="run the S3 gateway described by a TOML config")
    serve.add_argument("--config", required=True, metavar="FILE", help="the gateway's TOML config")
    serve.add_argument("--host", help="listen address (default: the config's host, which must be loopback; "
                                      "naming a non-loopback address here is the explicit opt-in)")
    serve.add_argument("--port", type=int, help="port of the main listener (overrides the config; 0 = any free)")
    serve.add_argument("--log-level", default="warning",
                       choices=["critical", "error", "warning", "info", "debug"])
    commands.add_parser("simulate", help="replay a trace against a placement policy and prices", add_help=False)
    commands.add_parser("trace", help="trace tools: 'trace synth' draws a trace from IBM trace statistics",
                        add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "simulate":
        from . import simulator  # heavy imports (prices, policies) only for this command

        return simulator.main(argv[1:])
    if argv and argv[0] == "trace":
        if argv[1:2] != ["synth"]:
            print("usage: skystore trace synth --stats FILE --part NAME ... (skystore trace synth --help)",
                  file=sys.stderr)
            return 2
        from . import synth

        return synth.main(argv[2:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.command == "serve":
        return _serve(args)
    parser.print_help()
    return 2


def _error(message: str, status: int = 2) -> int:
    print(f"skystore: error: {message}", file=sys.stderr, flush=True)
    return status


def _serve(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .config import Config, ConfigError
    from .server import PortInUse, is_loopback, serve

    try:
        config = Config.load(args.config)
    except FileNotFoundError:
        return _error(f"config file {args.config} not found")
    except ConfigError as e:
        return _error(f"bad config {args.config}: {e}")
    if args.port is not None:
        if not 0 <= args.port < 65536:
            return _error(f"--port {args.port} is not a port number")
        config.port = args.port
    host = args.host or config.host
    if args.host is None and not is_loopback(host):
        return _error(f"the config's host {host!r} is not a loopback address; pass --host {host} to listen on it "
                      "anyway (anyone who can reach it and holds a key can use the store)")

    def announce(server) -> None:
        print(f"SkyStore gateway: {len(config.regions)} region(s), policy {config.policy}", flush=True)
        for listener in server.listeners:
            who = (f"clients in {listener.region}" if listener.region else
                   f"clients placed by their SigV4 region, else {config.default_region}")
            print(f"  endpoint {listener.url}  ({who})", flush=True)
        for access_key in config.access_keys:
            print(f"  access key {access_key}", flush=True)
        print("Ready; Ctrl-C stops.", flush=True)

    try:
        serve(config, host=host, on_ready=announce, log_level=args.log_level)
    except PortInUse as e:
        return _error(f"{e} (is another gateway running? choose another port in the config or with --port)", 1)
    except KeyboardInterrupt:
        pass
    print("SkyStore gateway stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
