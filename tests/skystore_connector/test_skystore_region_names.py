"""Region names in both spellings (``aws:us-east-1``, ``aws-us-east-1``): every region of the shipped price files
survives the round trip, and a name finds its configured region in either spelling."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from skystore_connector.config import REGION_NAME
from skystore_connector.region_names import (UnknownRegionError, cloud_identity, find_region, region_name,
                                             resolve_region)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "skystore"
needs_shared = pytest.mark.skipif(not (SHARED / "egress_cost.csv").is_file(),
                                  reason=f"shared price files not found in {SHARED} (see ../shared/data/README.md)")

CLOUDS = {"aws-us-east-1": "aws:us-east-1", "gcp-us-west1-a": "gcp:us-west1-a", "east": "aws:eu-west-1"}


@pytest.mark.parametrize("colon, dash", [("aws:us-east-1", "aws-us-east-1"), ("gcp:us-west1-a", "gcp-us-west1-a"),
                                         ("azure:eastus", "azure-eastus")])
def test_the_two_spellings(colon, dash):
    assert region_name(colon) == region_name(dash) == dash
    assert cloud_identity(dash) == cloud_identity(colon) == colon
    assert region_name(f" {colon} ") == dash  # as typed in a flag or a header


def test_a_dash_form_without_a_known_vendor_is_no_identity():
    assert cloud_identity("us-east-1") == "us-east-1"  # AWS's own name, not SkyStore's
    assert cloud_identity("nowhere") == "nowhere"


@needs_shared
def test_every_shipped_region_round_trips():
    with open(SHARED / "egress_cost.csv", newline="") as f:
        clouds = {cloud for row in csv.DictReader(f) for cloud in (row["src"], row["dest"])}
    assert len(clouds) == 71
    for cloud in clouds:
        assert REGION_NAME.match(region_name(cloud)), cloud  # a valid config table name
        assert cloud_identity(region_name(cloud)) == cloud


@pytest.mark.parametrize("text, region", [("aws-us-east-1", "aws-us-east-1"), ("aws:us-east-1", "aws-us-east-1"),
                                          ("gcp:us-west1-a", "gcp-us-west1-a"), ("east", "east"),
                                          ("aws:eu-west-1", "east"), ("aws-eu-west-1", "east"),
                                          ("us-east-1", None), ("aws:mars-1", None)])
def test_find_region_in_either_spelling(text, region):
    assert find_region(text, CLOUDS) == region


def test_a_cloud_shared_by_two_regions_names_neither():
    assert find_region("aws:us-east-1", {"a": "aws:us-east-1", "b": "aws:us-east-1"}) is None


def test_unknown_region_lists_the_known_ones_in_both_spellings():
    with pytest.raises(UnknownRegionError) as caught:
        resolve_region("aws:mars-1", CLOUDS)
    message = str(caught.value)
    assert "'aws:mars-1'" in message
    assert "aws-us-east-1 (aws:us-east-1)" in message and "east (aws:eu-west-1)" in message
