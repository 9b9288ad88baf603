"""Region names in either spelling: SkyStore's own ``provider:region`` (``aws:us-east-1``, ``gcp:us-west1-a``,
``azure:eastus``: the price files and traces use it) and the dash form (``aws-us-east-1``: config table names,
SigV4 credential scopes and boto3's ``region_name``, which allow no colon). The two spell the same region: the
first dash of the dash form is the colon of the other.

Every place a region name comes in from a user (config file, ``skystore simulate --region-list``, trace files,
fsspec and Hadoop options, SigV4 scopes and LocationConstraint headers) goes through ``region_name`` /
``cloud_identity`` to spell it, and through ``find_region`` / ``resolve_region`` to find the configured region.
"""
from __future__ import annotations

from typing import Iterable, Mapping

# vendors whose dash-form names can be read back as cloud identities (the vendors of the price files)
VENDORS = ("aws", "azure", "gcp")


class UnknownRegionError(LookupError):
    """A region (or a pair of them) that the configuration or the price tables do not cover."""

    def __str__(self) -> str:  # LookupError would print the repr of the message
        return str(self.args[0]) if self.args else "unknown region"


def region_name(text: str) -> str:
    """The dash form: ``aws:us-east-1`` -> ``aws-us-east-1``; a dash-form name comes back as it is."""
    return text.strip().replace(":", "-", 1)


def cloud_identity(text: str) -> str:
    """The ``provider:region`` form: ``aws-us-east-1`` -> ``aws:us-east-1``; anything else comes back as it is
    (a dash form is only read as one when it starts with a known vendor: ``us-east-1`` is no identity)."""
    text = text.strip()
    vendor, dash, rest = text.partition("-")
    if ":" in text or not (dash and rest) or vendor not in VENDORS:
        return text
    return f"{vendor}:{rest}"


def find_region(text: str, clouds: Mapping[str, str]) -> str | None:
    """The configured region (a key of ``clouds``, region name -> cloud identity) that ``text`` names in either
    spelling: its name, or the cloud identity of exactly one region. None when it names none."""
    for candidate in (text, region_name(text)):
        if candidate in clouds:
            return candidate
    holders = [name for name, cloud in clouds.items() if cloud == cloud_identity(text)]
    return holders[0] if len(holders) == 1 else None


def resolve_region(text: str, clouds: Mapping[str, str], *, what: str = "region") -> str:
    """``find_region``, or ``UnknownRegionError`` listing the configured regions in both spellings."""
    found = find_region(text, clouds)
    if found is None:
        raise UnknownRegionError(f"unknown {what} {text!r}; configured: {both_spellings(clouds.items())}")
    return found


def both_spellings(pairs: Iterable[tuple[str, str]]) -> str:
    """``aws-us-east-1 (aws:us-east-1), ...`` from (name, cloud identity) pairs, for error messages."""
    return ", ".join(f"{name} ({cloud})" for name, cloud in pairs) or "none"
