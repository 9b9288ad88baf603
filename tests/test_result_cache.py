"""llm_sql.cache.ResultCache: SQLite result cache, location rules, and use from several processes."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from llm_sql.cache import ResultCache, cache_key, default_cache_path

ROOT = Path(__file__).resolve().parents[1]

_WRITER = """
import sys
from llm_sql.cache import ResultCache
path, tag, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cache = ResultCache(path)
for start in range(0, n, batch):
    cache.put_many({f"{tag}-{i}": f"value-{tag}-{i}" for i in range(start, min(n, start + batch))})
    cache.get_many([f"{tag}-{start}"])
print(len(cache))
"""


def _spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", _WRITER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_get_put_clear_len(tmp_path):
    c = ResultCache(tmp_path / "sub" / "r.sqlite")
    assert len(c) == 0 and c.get_many(["x"]) == {}
    c.put_many({"a": "1", "b": "2"})
    assert c.get_many(["a", "b", "zz"]) == {"a": "1", "b": "2"}
    c.put_many({"a": "3"})
    assert c.get("a") == "3" and len(c) == 2 and "b" in c
    c.put_many({f"k{i}": str(i) for i in range(1200)})  # more keys than one IN (...) chunk
    assert len(c.get_many([f"k{i}" for i in range(1200)])) == 1200
    c.clear()
    assert len(c) == 0
    mode = sqlite3.connect(tmp_path / "sub" / "r.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"


def test_disabled_is_a_noop(tmp_path):
    c = ResultCache(tmp_path / "off.sqlite", enabled=False)
    c.put_many({"a": "1"})
    assert c.get_many(["a"]) == {} and len(c) == 0
    assert not (tmp_path / "off.sqlite").exists()


def test_location_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_SQL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "llm-sql" / "results.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_path() == Path.home() / ".cache" / "llm-sql" / "results.sqlite"
    monkeypatch.setenv("LLM_SQL_CACHE_DIR", str(tmp_path / "override"))
    c = ResultCache()
    assert c.path == tmp_path / "override" / "results.sqlite"
    c.put_many({"k": "v"})
    assert ResultCache().get("k") == "v"


def test_cache_key_depends_on_every_part():
    base = cache_key("m", {"temperature": 0.0, "max_tokens": 8}, "prompt")
    assert base == cache_key("m", {"max_tokens": 8, "temperature": 0.0}, "prompt")
    assert len(base) == 64
    assert base != cache_key("m2", {"temperature": 0.0, "max_tokens": 8}, "prompt")
    assert base != cache_key("m", {"temperature": 0.5, "max_tokens": 8}, "prompt")
    assert base != cache_key("m", {"temperature": 0.0, "max_tokens": 8}, "prompt ")


def test_another_process_writes_this_one_reads(tmp_path):
    path = tmp_path / "shared.sqlite"
    mine = ResultCache(path)  # opened before the other process writes
    p = _spawn(str(path), "child", "50", "50")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert mine.get_many([f"child-{i}" for i in range(50)]) == {f"child-{i}": f"value-child-{i}" for i in range(50)}


def test_concurrent_writers(tmp_path):
    path = tmp_path / "busy.sqlite"
    ResultCache(path)  # create the file and the table up front
    procs = [_spawn(str(path), f"w{k}", "300", "10") for k in range(3)]
    here = ResultCache(path)
    for start in range(0, 300, 10):  # this process writes at the same time
        here.put_many({f"main-{i}": f"value-main-{i}" for i in range(start, start + 10)})
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(here) == 4 * 300
    got = here.get_many([f"w1-{i}" for i in range(300)])
    assert got == {f"w1-{i}": f"value-w1-{i}" for i in range(300)}


def test_udf_contract():
    from udf.api import ResultCache as Protocol

    for name in ("get_many", "put_many"):
        assert hasattr(ResultCache, name) and hasattr(Protocol, name)


def test_picklable(tmp_path):
    import pickle

    c = ResultCache(tmp_path / "p.sqlite")
    c.put_many({"a": "1"})
    d = pickle.loads(pickle.dumps(c))
    assert d.get("a") == "1" and d.path == c.path
