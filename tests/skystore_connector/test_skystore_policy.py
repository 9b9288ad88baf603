"""Prices and placement policies: hand-made price tables, T_even from the shipped prices, the learned TTL on
constructed gap histories."""
from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from skystore_connector.policy import MIN_HISTORY, LearnedTTLPolicy, make_policy
from skystore_connector.pricing import SECONDS_PER_MONTH, Prices, UnknownRegionError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "skystore"
needs_shared = pytest.mark.skipif(not (SHARED / "egress_cost.csv").is_file(),
                                  reason=f"shared price files not found in {SHARED} (see ../shared/data/README.md)")

STORAGE_PER_S = 0.001  # $/GB-second: with egress 0.1 $/GB, T_even = 100 s


def toy_prices(get: float = 0.0, put: float = 0.0) -> Prices:
    month = STORAGE_PER_S * SECONDS_PER_MONTH
    return Prices(storage={"a": month, "b": month, "c": month},
                  egress={("a", "b"): 0.1, ("b", "a"): 0.1, ("a", "c"): 0.3, ("c", "a"): 0.3,
                          ("b", "c"): 0.05, ("c", "b"): 0.05},
                  get_request={r: get for r in "abc"}, put_request={r: put for r in "abc"})


CLOUDS = {"a": "a", "b": "b", "c": "c"}


# ---- pricing ------------------------------------------------------------------------------------------------

def test_explicit_tables_and_t_even():
    p = toy_prices(get=1e-6, put=2e-6)
    assert p.storage_gb_second("a") == pytest.approx(STORAGE_PER_S)
    assert p.egress_gb("a", "b") == 0.1
    assert p.egress_gb("b", "b") == 0.0  # within one region
    assert p.t_even("a", "b") == pytest.approx(100.0)
    assert p.t_even("a", "c") == pytest.approx(300.0)
    assert p.t_even("b", "b") == 0.0
    assert (p.get_request("a"), p.put_request("c")) == (1e-6, 2e-6)


def test_free_storage_gives_infinite_t_even():
    p = Prices(storage={"a": 0.0, "b": 0.0}, egress={("a", "b"): 0.1})
    assert p.t_even("a", "b") == math.inf


def test_unknown_region_is_named():
    with pytest.raises(UnknownRegionError, match="mars"):
        toy_prices().storage_gb_month("aws:mars-1")
    with pytest.raises(UnknownRegionError, match="'a'.*'zz'|zz"):
        Prices(storage={"a": 1.0, "zz": 1.0}).egress_gb("a", "zz")


def test_default_list_prices():
    p = Prices.default()
    assert p.storage_gb_month("aws:us-east-1") == 0.023
    assert p.egress_gb("aws:us-east-1", "aws:eu-west-1") == 0.02
    assert p.egress_gb("aws:us-east-1", "gcp:us-central1") == 0.09
    assert p.egress_gb("aws:us-east-1", "aws:us-east-1") == 0.0
    assert p.get_request("x:y") == pytest.approx(0.0004 / 1000)
    assert p.put_request("x:y") == pytest.approx(0.005 / 1000)
    assert p.t_even("aws:us-east-1", "aws:eu-west-1") == pytest.approx(0.02 / (0.023 / SECONDS_PER_MONTH))


@needs_shared
def test_t_even_from_shipped_prices():
    p = Prices.load(SHARED)
    # egress_cost.csv: aws:us-east-1 -> aws:eu-west-1 costs $0.02/GB; S3 General Purpose in eu-west-1, first
    # range: $0.023/GB-month. T_even = 0.02 / (0.023 / (730 * 3600)) s, about 26.4 days.
    assert p.egress_gb("aws:us-east-1", "aws:eu-west-1") == 0.02
    assert p.storage_gb_month("aws:eu-west-1") == 0.023
    assert p.t_even("aws:us-east-1", "aws:eu-west-1") == pytest.approx(0.02 / (0.023 / (730 * 3600)))
    assert p.get_request("aws:us-east-1") == pytest.approx(4e-7)
    assert p.put_request("aws:us-east-1") == pytest.approx(5e-6)
    # GCP rows name a zone; the region resolves to it
    assert p.storage_gb_month("gcp:us-central1") == p.storage_gb_month("gcp:us-central1-a") == 0.02
    with pytest.raises(UnknownRegionError, match="aws:nowhere-9"):
        p.t_even("aws:us-east-1", "aws:nowhere-9")


@needs_shared
def test_shipped_prices_take_either_spelling_and_name_the_known_regions():
    p = Prices.load(SHARED)
    assert p.t_even("aws-us-east-1", "gcp-us-west1-a") == p.t_even("aws:us-east-1", "gcp:us-west1-a")
    assert p.storage_gb_month("gcp-us-central1") == p.storage_gb_month("gcp:us-central1-a")  # the zone alias
    with pytest.raises(UnknownRegionError) as caught:
        p.storage_gb_month("aws-mars-1")
    assert "'aws-mars-1'" in str(caught.value) and "aws:us-east-1 (aws-us-east-1)" in str(caught.value)


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="egress_cost.csv"):
        Prices.load(tmp_path)


# ---- simple policies --------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, ttl", [("t_even", 100.0), ("always-store", math.inf), ("always-evict", 0.0),
                                       ("fixed:30", 30.0), ("replicate-all", math.inf), ("learned", 100.0)])
def test_policy_ttls(spec, ttl):
    policy = make_policy(spec, toy_prices(), CLOUDS)
    assert policy.ttl("b", "a", now=0.0) == pytest.approx(ttl)


def test_initial_regions():
    prices = toy_prices()
    assert make_policy("replicate-all", prices, CLOUDS).initial_regions("b", ["a", "b", "c"]) == ["b", "a", "c"]
    for spec in ("learned", "t_even", "always-store", "always-evict", "fixed:5"):
        assert make_policy(spec, prices, CLOUDS).initial_regions("b", ["a", "b", "c"]) == ["b"]


def test_region_names_map_to_clouds():
    policy = make_policy("t_even", toy_prices(), {"east": "a", "west": "c"})
    assert policy.ttl("west", "east", 0.0) == pytest.approx(300.0)


@pytest.mark.parametrize("spec", ["nope", "fixed:abc", "fixed:-1", ""])
def test_bad_specs(spec):
    if spec == "":  # empty means the default, which is valid
        assert make_policy(spec, toy_prices(), CLOUDS).name == "learned"
        return
    with pytest.raises(ValueError):
        make_policy(spec, toy_prices(), CLOUDS)


# ---- learned TTL ------------------------------------------------------------------------------------------

def feed_gaps(policy: LearnedTTLPolicy, region: str, gaps: list[float], start: float = 0.0,
              size: int | None = None, reads_per_key: int = 5) -> float:
    """For each gap a key read ``reads_per_key`` times, ``gap`` apart. Returns the time after the last read."""
    t = start
    for i, gap in enumerate(gaps):
        for _ in range(reads_per_key):
            policy.record_read(region, "bkt", f"k{start}-{i}", t, size=size)
            t += gap
        t += 0.001
    return t


def test_learned_falls_back_to_t_even_until_enough_history():
    policy = make_policy("learned", toy_prices(), CLOUDS)
    feed_gaps(policy, "b", [5.0] * 6)  # 6 keys x 4 gaps (+ a few last reads aged out) < MIN_HISTORY
    assert policy.history("b")["observations"] < MIN_HISTORY
    assert policy.ttl("b", "a", 0.0) == pytest.approx(100.0)


def test_learned_picks_ttl_just_covering_short_gaps():
    policy = make_policy("learned", toy_prices(), CLOUDS)
    t = feed_gaps(policy, "b", [5.0] * 10)
    # keeping 5 s costs 0.005 per GB against a 0.1 re-fetch: cover the gaps, no longer than needed (the bin edge
    # just above 5 s; edges are 10 per decade from 10 ms)
    assert 5.0 <= policy.ttl("b", "a", t) < 5.0 * 10 ** 0.1


def test_learned_covers_gaps_cheaper_to_keep_than_refetch():
    # keys re-read every 5 s and keys re-read every 60 s: keeping 60 s costs 0.06 < 0.1 per miss, so the TTL
    # covers both
    policy = make_policy("learned", toy_prices(), CLOUDS)
    t = feed_gaps(policy, "b", [5.0] * 10 + [60.0] * 10)
    assert 60.0 <= policy.ttl("b", "a", t) < 60.0 * 10 ** 0.1


def test_learned_skips_gaps_longer_than_t_even():
    # re-reads after 1000 s are beyond any T_even into c (at most 300 s): only the 5 s gaps are worth covering
    policy = make_policy("learned", toy_prices(), CLOUDS)
    t = feed_gaps(policy, "c", [5.0] * 10 + [1000.0] * 10)
    assert 5.0 <= policy.ttl("c", "a", t) < 5.0 * 10 ** 0.1


def test_learned_is_bounded_by_t_even_of_the_source():
    policy = make_policy("learned", toy_prices(), CLOUDS)
    t = feed_gaps(policy, "c", [200.0] * 10)  # worth keeping when re-fetching from a (T_even 300 s)
    assert 200.0 <= policy.ttl("c", "a", t) < 200.0 * 10 ** 0.1
    # from b the re-fetch costs 0.05: T_even = 50 s < 200 s, nothing is worth keeping
    assert policy.ttl("c", "b", t) == 0.0


def test_learned_evicts_when_objects_are_never_read_again():
    policy = make_policy("learned", toy_prices(), CLOUDS)
    for i in range(60):  # one read per object, each long past the horizon by the next
        policy.record_read("b", "bkt", f"once-{i}", i * 1000.0)
    assert policy.history("b")["observations"] >= MIN_HISTORY
    assert policy.ttl("b", "a", 60_000.0) == 0.0


def test_learned_weighs_gaps_by_size():
    # 10 big objects (1 GB) re-read every 60 s (keeping: 0.06 < re-fetch: 0.1) and 200 tiny ones (1 kB) never
    # read again. Counting reads, the 200 one-off reads make any TTL a loss (TTL 0); in dollars they are
    # negligible and the TTL covers the big objects' gaps.
    def ttl_after(tiny_size, big_size):
        policy = make_policy("learned", toy_prices(), CLOUDS)
        for i in range(200):
            policy.record_read("b", "bkt", f"tiny-{i}", i * 0.001, size=tiny_size)
        t = feed_gaps(policy, "b", [60.0] * 10, start=1000.0, size=big_size)
        return policy.ttl("b", "a", t)

    assert ttl_after(None, None) == 0.0  # no sizes: every read weighs the same
    assert 60.0 <= ttl_after(1_000, 10**9) < 60.0 * 10 ** 0.1


def test_learned_is_thread_safe():
    policy = make_policy("learned", toy_prices(), CLOUDS)
    errors = []

    def hammer(n: int):
        try:
            for i in range(300):
                policy.record_read("b", "bkt", f"k{i % 7}", n * 1000 + i * 0.5)
                policy.ttl("b", "a", n * 1000 + i * 0.5)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert policy.history("b")["observations"] > 0
