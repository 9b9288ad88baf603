"""Placement policies: where a write puts copies and how long a replicated (non-base) copy is kept.

SkyStore (arXiv 2502.20818) writes to the client's region (the base copy, never evicted), replicates on read and
keeps a replica for a TTL. Keeping a copy at ``dst`` for t seconds costs storage(dst) * t; dropping it and
fetching again costs egress(src, dst). The break-even time T_even = egress / storage per second is the longest
a copy is worth keeping without knowing the future; the learned policy picks a shorter TTL when the reads so
far say that pays.

Policies (``make_policy`` specs):

=================  ==================================================================================
``learned``        per class of reads (region, size, first/second/later read), the TTL that would have cost
                   least on the reads so far, at most T_even (``learned.py``)
``t_even``         TTL = T_even(source, region)
``fixed:SECONDS``  TTL = SECONDS
``always-store``   TTL = inf: a replica, once made, stays
``always-evict``   TTL = 0: no replicas, reads from other regions are served remotely
``replicate-all``  every write is copied to every region; copies stay (like a multi-region bucket)
=================  ==================================================================================

The store calls these objects from request threads, so every method is thread-safe. Pure computation, no I/O.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .pricing import Prices

DEFAULT_POLICY = "learned"
POLICY_NAMES = ("learned", "t_even", "fixed:SECONDS", "always-store", "always-evict", "replicate-all")

class Policy:
    """Base class: one base copy where the client wrote, no replicas (subclasses override ``ttl``)."""

    name = "policy"

    def initial_regions(self, write_region: str, regions: Sequence[str]) -> list[str]:
        """Where a completed write puts copies; the first is the base copy (never evicted)."""
        return [write_region]

    def ttl(self, region: str, source: str, now: float, bucket: str | None = None, key: str | None = None) -> float:
        """Seconds to keep (or extend) a non-base copy in ``region`` whose cheapest re-fetch source is
        ``source``; 0 = do not keep it, ``math.inf`` = keep it forever. ``bucket``/``key`` name the object just
        read (the learned TTL looks up its class), absent for copies made at a write."""
        return 0.0

    def record_read(self, region: str, bucket: str, key: str, now: float, size: int | None = None,
                    base: str | None = None) -> None:
        """Every read served in ``region`` (only the learned policy uses these). ``size`` (bytes, optional) lets
        the learned TTL weigh each read by the bytes it would store or move; ``base`` is the region of the
        object's base copy (reads there never need a copy)."""

    def batch_ttls(self, batch) -> np.ndarray:
        """TTLs for a batch of reads in trace order (``fastsim.ReadBatch``): one row per read, one column per
        source region. Here: ``ttl`` asked once per (reader, source) pair, right for policies that ignore time
        and history; a learning policy overrides it."""
        names = batch.regions
        table = np.array([[self.ttl(r, s, 0.0) for s in names] for r in names])
        return table[batch.region]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class FixedTTLPolicy(Policy):
    def __init__(self, seconds: float, name: str | None = None):
        if not seconds >= 0:  # also rejects NaN
            raise ValueError(f"TTL must be >= 0 seconds, got {seconds}")
        self.seconds = float(seconds)
        self.name = name or f"fixed:{seconds:g}"

    def ttl(self, region: str, source: str, now: float, bucket: str | None = None,
            key: str | None = None) -> float:
        return self.seconds


class ReplicateAllPolicy(Policy):
    name = "replicate-all"

    def initial_regions(self, write_region: str, regions: Sequence[str]) -> list[str]:
        return [write_region] + [r for r in regions if r != write_region]

    def ttl(self, region: str, source: str, now: float, bucket: str | None = None,
            key: str | None = None) -> float:
        return math.inf


class _CloudPrices:
    """T_even between region *names*, through the region -> cloud identity map (memoised, thread-safe)."""

    def __init__(self, prices: Prices, clouds: Mapping[str, str]):
        self.prices = prices
        self.clouds = dict(clouds)
        self._t_even: dict[tuple[str, str], float] = {}

    def cloud(self, region: str) -> str:
        return self.clouds.get(region, region)

    def t_even(self, source: str, region: str) -> float:
        key = (source, region)
        value = self._t_even.get(key)
        if value is None:  # a racing thread computes the same number; dict assignment is atomic
            value = self._t_even[key] = self.prices.t_even(self.cloud(source), self.cloud(region))
        return value


class PriceTables:
    """Prices by region index (what the array code needs): vectors per region, matrices [source, destination].
    ``clouds`` maps region names to cloud identities."""

    def __init__(self, prices: Prices, clouds: Mapping[str, str], regions: Sequence[str]):
        self.regions = list(regions)
        ids = [clouds.get(r, r) for r in self.regions]
        n = len(ids)
        self.storage = np.array([prices.storage_gb_second(c) for c in ids])  # $ per GB-second
        self.get = np.array([prices.get_request(c) for c in ids])
        self.put = np.array([prices.put_request(c) for c in ids])
        self.egress = np.array([[prices.egress_gb(s, d) for d in ids] for s in ids]).reshape(n, n)  # $ per GB
        self.t_even = np.array([[prices.t_even(s, d) for d in ids] for s in ids]).reshape(n, n)


class TEvenPolicy(Policy):
    name = "t_even"

    def __init__(self, prices: Prices, clouds: Mapping[str, str]):
        self._costs = _CloudPrices(prices, clouds)

    def ttl(self, region: str, source: str, now: float, bucket: str | None = None,
            key: str | None = None) -> float:
        return self._costs.t_even(source, region)


def make_policy(spec: str | None, prices: Prices, clouds: Mapping[str, str]) -> Policy:
    """A policy from its spec (see the module docstring); ``clouds`` maps region names to cloud identities."""
    text = (spec or DEFAULT_POLICY).strip().lower()
    if text == "learned":
        from .learned import LearnedTTLPolicy  # it builds on this module's classes

        return LearnedTTLPolicy(prices, clouds)
    if text in ("t_even", "t-even", "teven", "ttl"):
        return TEvenPolicy(prices, clouds)
    if text == "always-store":
        return FixedTTLPolicy(math.inf, name="always-store")
    if text == "always-evict":
        return FixedTTLPolicy(0.0, name="always-evict")
    if text == "replicate-all":
        return ReplicateAllPolicy()
    if text.startswith("fixed:"):
        try:
            seconds = float(text.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad fixed TTL {spec!r}: expected fixed:SECONDS, e.g. fixed:3600") from None
        return FixedTTLPolicy(seconds)
    raise ValueError(f"unknown placement policy {spec!r}; choose one of: {', '.join(POLICY_NAMES)}")
