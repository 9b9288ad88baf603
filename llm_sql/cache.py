"""The persistent result cache: answers of earlier queries, keyed by model, sampling parameters and prompt.

``ResultCache()`` is one SQLite file (stdlib ``sqlite3``, WAL journal) with one table
``results(key TEXT PRIMARY KEY, value TEXT, created_at REAL)``. Where it lives:

1. ``ResultCache(path=...)`` when given;
2. ``$LLM_SQL_CACHE_DIR/results.sqlite`` when that variable is set;
3. ``$XDG_CACHE_HOME/llm-sql/results.sqlite``, by default ``~/.cache/llm-sql/results.sqlite``.

Keys come from :func:`cache_key` (sha256 over the model identity, the sampling parameters
and the full prompt), so a different model, temperature or prompt never reads another's
answer. Only successful raw outputs are stored; failures are never cached.

Several processes may read and write the same file at once: every call opens its own
short transaction, WAL lets readers run beside one writer, and a busy timeout makes
writers wait for each other instead of failing. ``ResultCache(enabled=False)`` keeps
nothing and answers nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

_SCHEMA = "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at REAL NOT NULL)"
_CHUNK = 500  # keys per SELECT ... IN (...), below SQLite's variable limit


def default_cache_dir() -> Path:
    """``$LLM_SQL_CACHE_DIR``, else ``$XDG_CACHE_HOME/llm-sql``, else ``~/.cache/llm-sql``."""
    override = os.environ.get("LLM_SQL_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    from llm_sql.models import cache_dir

    return cache_dir()


def default_cache_path() -> Path:
    return default_cache_dir() / "results.sqlite"


def cache_key(model_id: str, params: dict[str, Any], prompt: str) -> str:
    """sha256 hex of the model identity, the sampling parameters (canonical JSON) and the full prompt."""
    blob = json.dumps({"model": model_id, "params": params, "prompt": prompt}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    """SQLite-backed ``key -> value`` store satisfying ``udf.api.ResultCache``."""

    def __init__(self, path: str | Path | None = None, enabled: bool = True, timeout: float = 60.0):
        self.enabled = bool(enabled)
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self.timeout = timeout
        self._local = threading.local()
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.execute(_SCHEMA)

    # ---- connections -------------------------------------------------------------------------------
    def _connect(self) -> "_Txn":
        """One connection per thread (sqlite3 connections must stay on their thread)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            for _ in range(50):  # switching to WAL needs a moment without other writers
                try:
                    con.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.05)
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute(_SCHEMA)
            self._local.con = con
        return _Txn(con)

    # ---- API ---------------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The stored values of those ``keys`` that are present."""
        keys = list(dict.fromkeys(keys))
        if not self.enabled or not keys:
            return {}
        out: dict[str, str] = {}
        with self._connect() as con:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(part))
                out.update(con.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", part).fetchall())
        return out

    def get(self, key: str) -> str | None:
        return self.get_many([key]).get(key)

    def put_many(self, items: dict[str, str]) -> None:
        """Store all ``items`` in one transaction (a later put of a key replaces its value)."""
        if not self.enabled or not items:
            return
        now = time.time()
        rows = [(k, v, now) for k, v in items.items()]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("INSERT OR REPLACE INTO results (key, value, created_at) VALUES (?, ?, ?)", rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def clear(self) -> None:
        if not self.enabled:
            return
        with self._connect() as con:
            con.execute("DELETE FROM results")

    def __len__(self) -> int:
        if not self.enabled:
            return 0
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def __getstate__(self) -> dict[str, Any]:  # picklable (e.g. shipped to Spark workers): connections reopen
        return {"path": self.path, "enabled": self.enabled, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.enabled, self.timeout = state["path"], state["enabled"], state["timeout"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ResultCache(path={str(self.path)!r}, enabled={self.enabled})"


class _Txn:
    """Context wrapper that hands out the thread's connection (autocommit; explicit BEGIN where needed)."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc: Any) -> None:
        return None
