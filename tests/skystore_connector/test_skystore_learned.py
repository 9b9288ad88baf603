"""The learned TTL: what it learns from constructed read histories, and its batch form (the fast simulator's)
giving the same TTLs as the read-by-read policy."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from skystore_connector.fastsim import ReadBatch
from skystore_connector.learned import FIRST_EPOCH, LearnedTTLPolicy, read_class
from skystore_connector.pricing import SECONDS_PER_MONTH, Prices

GB = 10**9
CLOUDS = {"a": "a", "b": "b", "c": "c"}


def toy_prices(put: float = 0.0) -> Prices:
    """Storage 0.001 $/GB-s everywhere; egress a->b 0.1 (T_even 100 s), a->c 0.3 (300 s), b<->c 0.05 (50 s)."""
    month = 0.001 * SECONDS_PER_MONTH
    return Prices(storage={"a": month, "b": month, "c": month},
                  egress={("a", "b"): 0.1, ("b", "a"): 0.1, ("a", "c"): 0.3, ("c", "a"): 0.3,
                          ("b", "c"): 0.05, ("c", "b"): 0.05},
                  get_request={r: 0.0 for r in "abc"}, put_request={r: put for r in "abc"})


def feed(policy, reads) -> float:
    """``reads``: (region, key, time, size) in time order, based in a. Returns the last time."""
    for region, key, t, size in reads:
        policy.record_read(region, "bkt", key, t, size=size, base="a")
    return reads[-1][2]


def periodic(n_keys: int, every: float, reads_each: int, size: int = GB, region: str = "b", start: float = 0.0):
    """Each key read ``reads_each`` times, ``every`` seconds apart; keys interleaved, so history builds evenly."""
    rows = [(region, f"k{i}", start + r * every + i * every / n_keys, size)
            for r in range(reads_each) for i in range(n_keys)]
    return sorted(rows, key=lambda row: row[2])


def test_t_even_until_the_first_decision():
    policy = LearnedTTLPolicy(toy_prices(), CLOUDS)
    t = feed(policy, periodic(10, 5.0, 20)[:FIRST_EPOCH])  # decided at read FIRST_EPOCH, not before
    assert policy.ttl("b", "a", t, "bkt", "k1") == pytest.approx(100.0)
    assert policy.ttl("c", "a", t) == pytest.approx(300.0)


def test_keeps_copies_of_objects_read_again_and_again():
    # re-read every 20 s: keeping costs 0.02 per gap against 0.1 per re-fetch, and nothing says the reads stop
    policy = LearnedTTLPolicy(toy_prices(), CLOUDS)
    t = feed(policy, periodic(40, 20.0, 30))
    assert policy.ttl("b", "a", t, "bkt", "k3") == pytest.approx(100.0)


def test_evicts_copies_of_objects_read_once():
    policy = LearnedTTLPolicy(toy_prices(), CLOUDS)
    t = feed(policy, [("b", f"once{i}", i * 10.0, GB) for i in range(600)])
    assert policy.ttl("b", "a", t, "bkt", "once599") == 0.0
    assert policy.ttl("b", "a", t) == 0.0  # the region's pooled choice too


def test_covers_a_burst_then_lets_go():
    # each key read 3 times 5 s apart, then never again: a first read's copy covers the next 5 s, a third read's
    # copy is not kept
    policy = LearnedTTLPolicy(toy_prices(), CLOUDS)
    rows = [("b", f"k{i}", i * 30.0 + r * 5.0, GB) for i in range(300) for r in range(3)]
    t = feed(policy, sorted(rows, key=lambda row: row[2]))
    assert policy.ttl("b", "a", t, "bkt", "k299") == 0.0  # its third read
    policy.record_read("b", "bkt", "new", t + 1, size=GB, base="a")
    assert policy.ttl("b", "a", t + 1, "bkt", "new") >= 5.0


def test_bounded_by_t_even_of_the_source():
    # re-read every 80 s: worth keeping into c when re-fetching from a (T_even 300 s), not from b (50 s)
    policy = LearnedTTLPolicy(toy_prices(), CLOUDS)
    t = feed(policy, periodic(40, 80.0, 20, region="c"))
    assert policy.ttl("c", "a", t, "bkt", "k1") >= 80.0
    assert policy.ttl("c", "b", t, "bkt", "k1") <= 50.0


def test_small_objects_are_not_worth_a_put():
    # a PUT costs 1e-4; 1 kB re-fetched from a costs 1e-7: a copy never pays for itself, a 1 GB copy does
    def ttl(size):
        policy = LearnedTTLPolicy(toy_prices(put=1e-4), CLOUDS)
        t = feed(policy, periodic(40, 20.0, 30, size=size))
        return policy.ttl("b", "a", t, "bkt", "k1")

    assert ttl(1000) == 0.0
    assert ttl(GB) == pytest.approx(100.0)


def test_reads_in_the_base_region_are_not_learned():
    policy = LearnedTTLPolicy(toy_prices(), CLOUDS)
    for i in range(600):
        policy.record_read("a", "bkt", f"once{i}", i * 10.0, size=GB, base="a")
    assert policy.ttl("b", "a", 6000.0) == pytest.approx(100.0)  # no history in b: T_even


def test_classes_by_size_and_read_count():
    assert read_class(500, 0) == 0 and read_class(2000, 0) == 3 and read_class(2000, 1) == 4
    assert read_class(2000, 7) == 5 and read_class(10**12, 0) == 18


def random_reads(n: int, seed: int):
    rng = np.random.default_rng(seed)
    times = np.sort(rng.exponential(2.0, n).cumsum())
    keys = rng.zipf(1.5, n) % 300
    regions = rng.integers(0, 3, n)
    bases = (keys * 7) % 3
    sizes = np.exp(rng.uniform(np.log(100), np.log(5e8), 300)).astype(np.int64)[keys]
    return times, keys, regions, bases, sizes


def test_batch_form_gives_the_online_ttls():
    """Reads across several decisions and batches: every TTL, for every source, equals the online policy's."""
    names = ["a", "b", "c"]
    prices = toy_prices(put=1e-6)
    times, keys, regions, bases, sizes = random_reads(3000, seed=3)
    online = LearnedTTLPolicy(prices, CLOUDS)
    expected = np.zeros((len(times), 3))
    for i in range(len(times)):
        region, base = names[regions[i]], names[bases[i]]
        online.record_read(region, "trace", f"k{keys[i]}", times[i], size=int(sizes[i]), base=base)
        if region != base:
            expected[i] = [online.ttl(region, s, times[i], "trace", f"k{keys[i]}") for s in names]
    batch = LearnedTTLPolicy(prices, CLOUDS)
    got = []
    for lo, hi in ((0, 700), (700, 701), (701, 2500), (2500, 3000)):  # batches of odd sizes, one of one read
        got.append(batch.batch_ttls(ReadBatch(names, regions[lo:hi], bases[lo:hi], keys[lo:hi], times[lo:hi],
                                              sizes[lo:hi])))
    got = np.concatenate(got)
    remote = regions != bases
    assert np.allclose(got[remote], expected[remote], rtol=1e-12)
    assert len(np.unique(expected[remote])) > 3  # it did learn something beyond T_even


def test_thread_safe():
    policy = LearnedTTLPolicy(toy_prices(), CLOUDS)
    errors = []

    def hammer(n: int):
        try:
            for i in range(300):
                policy.record_read("b", "bkt", f"k{i % 7}", n * 1000 + i * 0.5, size=GB, base="a")
                policy.ttl("b", "a", n * 1000 + i * 0.5, "bkt", f"k{i % 7}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
