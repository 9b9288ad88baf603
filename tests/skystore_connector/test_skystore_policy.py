"""Prices and placement policies: hand-made price tables, T_even from the shipped prices, the simple policies
(the learned TTL has its own tests, test_skystore_learned.py)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from skystore_connector.policy import make_policy
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
