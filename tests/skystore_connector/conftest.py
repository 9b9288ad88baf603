"""Shared fixtures of the SkyStore tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


class Clock:
    """A controllable clock starting at the real time (blob mtimes are real times); thread-safe, so several
    stores (gateways) can share one."""

    def __init__(self):
        self.now = time.time()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def first_to_start_last_to_commit(slow_store, fast_store, bucket: str, key: str, slow_region: str,
                                  fast_region: str):
    """Two PUTs of one key: the first to start stalls until the second has committed. Returns the slow
    writer's ObjectInfo; the key must now hold its bytes, ``b"first to start, last to commit"``."""
    started, release = threading.Event(), threading.Event()

    def slow_body():
        yield b"first to start, "
        started.set()
        release.wait(10)
        yield b"last to commit"

    results = {}
    slow = threading.Thread(target=lambda: results.update(
        slow=slow_store.put_object(bucket, key, slow_body(), slow_region)))
    slow.start()
    assert started.wait(10)
    fast_store.put_object(bucket, key, b"second to start, first to commit", fast_region)
    release.set()
    slow.join(10)
    return results["slow"]


def kill_when_writing(script: str, *args: str) -> None:
    """Run ``script`` in a fresh Python, wait for its "writing" line, then SIGKILL it (a crash mid-upload)."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline() == b"writing\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def code(info) -> str:
    """The S3 error code of a ``pytest.raises(botocore ClientError)`` result."""
    return info.value.response["Error"]["Code"]


def status(info) -> int:
    """Its HTTP status."""
    return info.value.response["ResponseMetadata"]["HTTPStatusCode"]
