"""One embedded engine server per node, shared by every Python worker of a Spark application.

Python workers must not each load the model: the first process on a node that needs the engine (the
driver in local mode, else the first executor worker) starts ``llm-sql serve`` as a subprocess on loopback
with a random bearer token, and every other worker on the node connects to it, so they all share one model
load and one prefix (KV) cache.

State lives in a per-application directory ``$TMPDIR/llm-sql-<key>/`` (mode 0700; ``key`` is the Spark
application id plus a hash of the model and engine options, see ``app_key``):

* ``lock``: an ``fcntl.flock`` lock; starting, restarting and stopping happen under it;
* ``server.json`` (mode 0600): ``{"pid", "port", "url", "token", "model", "watch_pid", "started_at",
  "starts"}``, written atomically once the server answers ``/health``;
* ``server.log``: the server's stderr.

``ensure_server(key, model, ...)`` returns that record: if the recorded server answers ``/health`` it is
used as is; otherwise (no record, a dead pid, a port that no longer answers) the caller takes the lock,
checks again, kills a recorded but unhealthy process of ours, and starts a fresh one. A port that turns out
to be taken (another program bound it between our probe and the server's bind) is retried on another free
port.

Lifetime. The server is started through ``python -m llm_sql.node_engine serve --watch-pid PID ...``, a thin
wrapper around ``llm-sql serve`` that polls ``PID`` every second and exits when it is gone (a parent-death
watch that works across the fork/daemon structure of PySpark). In local mode the driver starts the server
with its own pid as ``PID`` and also stops it at interpreter exit (``atexit``) or ``stop_server``; on an
executor the watched pid is the worker's parent, the PySpark daemon, which lives exactly as long as the
executor, so the server ends with the application. It is in its own session, so signals Spark sends to a
worker's process group do not take it down with one worker.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

STATE_FILE = "server.json"
LOCK_FILE = "lock"
LOG_FILE = "server.log"
SERVE_MARKER = "llm_sql.node_engine"


def app_key(app_id: str, model: str, engine_options: dict[str, Any] | None = None) -> str:
    """A directory-safe key: the application id plus a hash of the model and the engine options."""
    blob = json.dumps({"model": str(model), "options": engine_options or {}}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(app_id))[:80]
    return f"{safe}-{digest}"


def _path(key: str) -> Path:
    return Path(tempfile.gettempdir()) / f"llm-sql-{key}"


def engine_dir(key: str) -> Path:
    d = _path(key)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked(d: Path):
    with open(d / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_state(key: str) -> dict[str, Any] | None:
    try:
        return json.loads((_path(key) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_state(d: Path, state: dict[str, Any]) -> None:
    tmp = d / f".{STATE_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, d / STATE_FILE)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _is_our_server(pid: int) -> bool:
    try:
        return SERVE_MARKER.encode() in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except OSError:
        return False


def healthy(state: dict[str, Any] | None, timeout: float = 2.0) -> bool:
    if not state or not state.get("url"):
        return False
    import httpx

    try:
        return httpx.get(state["url"] + "/health", timeout=timeout).status_code == 200
    except Exception:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _kill(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _start(d: Path, model: str, engine_args: list[str], watch_pid: int, timeout: float,
           attempts: int = 5) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        cmd = [sys.executable, "-m", SERVE_MARKER, "serve", "--watch-pid", str(watch_pid), "--",
               "--model", model, "--host", "127.0.0.1", "--port", str(port), *engine_args]
        env = {**os.environ, "LLM_SQL_API_KEY": token}  # not on the command line: ps shows argv
        root = str(Path(__file__).resolve().parent.parent)  # the project, importable from any cwd
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log = open(d / LOG_FILE, "ab")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                    start_new_session=True, close_fds=True)
        finally:
            log.close()
        state = {"pid": proc.pid, "port": port, "url": f"http://127.0.0.1:{port}", "token": token,
                 "model": model, "watch_pid": watch_pid, "started_at": time.time()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if healthy(state, timeout=1.0):
                return state
            time.sleep(0.2)
        if proc.poll() is None:  # hung past the timeout
            _kill(proc.pid)
            raise RuntimeError(f"llm-sql engine server did not become healthy in {timeout:.0f}s; see {d / LOG_FILE}")
        tail = (d / LOG_FILE).read_text(errors="replace")[-2000:]
        last_error = tail
        if "address already in use" in tail.lower() or "errno 98" in tail.lower():
            continue  # the port was taken between our probe and the bind: another port
        raise RuntimeError(f"llm-sql engine server exited with code {proc.returncode}; log {d / LOG_FILE}:\n{tail}")
    raise RuntimeError(f"llm-sql engine server could not bind a port after {attempts} tries:\n{last_error}")


def ensure_server(key: str, model: str, engine_args: list[str] | tuple[str, ...] = (), *,
                  watch_pid: int | None = None, timeout: float = 180.0) -> dict[str, Any]:
    """The node's server record (``url``, ``token``, ``pid``, ...), starting or restarting it if needed."""
    state = read_state(key)
    if healthy(state):
        return state  # type: ignore[return-value]
    d = engine_dir(key)
    with _locked(d):
        state = read_state(key)
        if healthy(state):
            return state  # type: ignore[return-value]
        starts = int((state or {}).get("starts", 0))
        if state and pid_alive(state.get("pid")) and _is_our_server(int(state["pid"])):
            _kill(int(state["pid"]))  # alive but not answering: replace it
        new = _start(d, model, list(engine_args), int(watch_pid or os.getpid()), timeout)
        new["starts"] = starts + 1
        _write_state(d, new)
        return new


def stop_server(key: str) -> bool:
    """Stop the node's server (if this machine has one for ``key``), remove its directory; True if one was
    running."""
    d = _path(key)
    if not d.is_dir():
        return False
    stopped = False
    with _locked(d):
        state = read_state(key)
        with contextlib.suppress(OSError):
            (d / STATE_FILE).unlink()
        if state and pid_alive(state.get("pid")) and _is_our_server(int(state["pid"])):
            _kill(int(state["pid"]))
            stopped = True
        shutil.rmtree(d, ignore_errors=True)  # the application is over: nobody else waits on this lock
    return stopped


def engine_args_from(options: dict[str, Any]) -> list[str]:
    """``llm-sql serve`` flags from engine options (device, dtype, kv_cache_memory, enable_prefix_caching,
    swap_space, preemption, speculative)."""
    args: list[str] = []
    if options.get("device"):
        args += ["--device", str(options["device"])]
    if options.get("dtype"):
        args += ["--dtype", str(options["dtype"])]
    if options.get("kv_cache_memory"):
        args += ["--kv-cache-memory", str(options["kv_cache_memory"])]
    if options.get("enable_prefix_caching") is False:
        args.append("--no-prefix-caching")
    if options.get("swap_space") is not None:
        args += ["--swap-space", str(options["swap_space"])]
    if options.get("preemption"):
        args += ["--preemption", str(options["preemption"])]
    if options.get("speculative"):
        args += ["--speculative", str(options["speculative"])]
    return args


# --- the server wrapper: llm-sql serve plus a parent-death watch ------------------------------------
def _watch(pid: int, interval: float = 1.0) -> None:
    while pid_alive(pid):
        time.sleep(interval)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_sql.node_engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="llm-sql serve that exits when --watch-pid is gone")
    serve.add_argument("--watch-pid", type=int, required=True)
    serve.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the llm-sql serve arguments")
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    threading.Thread(target=_watch, args=(args.watch_pid,), daemon=True, name="llm-sql-parent-watch").start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    from llm_sql.cli import main as cli_main

    return cli_main(["serve", *rest])


if __name__ == "__main__":
    sys.exit(main())
