"""Shared fixtures of the SkyStore tests."""
from __future__ import annotations

import threading
import time

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
