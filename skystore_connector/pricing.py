"""Cloud prices for placement decisions: storage, egress and requests, and the break-even time T_even.

Cloud identities are ``vendor:region`` strings as in the price files (``aws:us-east-1``, ``azure:eastus``,
``gcp:us-central1-a``). GCP rows in the shipped files name a zone; ``gcp:us-central1`` is accepted and resolved
to the single zone the tables hold for that region (``gcp:us-central1-a``). Lookups also take the dash
spelling of an identity (``aws-us-east-1``, see ``region_names``).

Units: storage in $ per GB-month, egress in $ per GB moved, requests in $ per single request. A month is
730 hours (365 * 24 / 12), the convention cloud bills use to turn GB-months into hourly charges.

``Prices.load(folder)`` reads the shipped CSVs (see ``../shared/data/README.md``):

* ``egress_cost.csv`` (``src,dest,cost``): egress per ordered pair. Moving data within one cloud identity is
  free (the file has no such rows).
* ``storage_pricing.csv``: for each vendor the standard (hot) tier only: AWS "General Purpose", Azure "Hot",
  GCP "Standard Storage". Storage uses the first volume range (the lowest ``StartingRange``: the price of a
  bucket under the first volume break, which is what a cache-sized copy set pays). "get request" and
  "put request" give the request prices. "get transfer"/"put transfer" rows (retrieval fees of cold tiers) are
  not used: the standard tiers charge none, and network egress comes from ``egress_cost.csv``.

``Prices.default()`` is for gateways configured without price files: flat list prices that hold for every
region (no per-region tables), see ``ListPrices``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .region_names import UnknownRegionError, both_spellings, cloud_identity, region_name

SECONDS_PER_MONTH = 730 * 3600.0
GB = 1e9  # price lists bill decimal gigabytes

EGRESS_FILE = "egress_cost.csv"
STORAGE_FILE = "storage_pricing.csv"
STANDARD_TIERS = {"aws": "General Purpose", "azure": "Hot", "gcp": "Standard Storage"}


@dataclass(frozen=True)
class ListPrices:
    """Flat list prices used by ``Prices.default()`` for any cloud identity (S3 standard-tier list prices)."""

    storage_gb_month: float = 0.023
    egress_within_vendor: float = 0.02   # e.g. aws:us-east-1 -> aws:eu-west-1
    egress_across_vendors: float = 0.09  # e.g. aws:us-east-1 -> gcp:us-central1
    get_request: float = 0.0004 / 1000
    put_request: float = 0.005 / 1000


def vendor_of(cloud: str) -> str:
    return cloud.split(":", 1)[0]


class Prices:
    """Price lookup by cloud identity. Build it from explicit tables, from the shipped CSVs (``load``) or from
    flat list prices (``default``). Unknown identities raise ``UnknownRegionError`` naming them."""

    def __init__(self, storage: Mapping[str, float] | None = None,
                 egress: Mapping[tuple[str, str], float] | None = None,
                 get_request: Mapping[str, float] | None = None,
                 put_request: Mapping[str, float] | None = None,
                 *, fallback: ListPrices | None = None, source: str = "tables"):
        self._storage = dict(storage or {})
        self._egress = dict(egress or {})
        self._get = dict(get_request or {})
        self._put = dict(put_request or {})
        self._fallback = fallback
        self.source = source
        self._aliases = self._zone_aliases()

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def default(cls) -> "Prices":
        return cls(fallback=ListPrices(), source="list prices (built in)")

    @classmethod
    def load(cls, folder: str | Path) -> "Prices":
        folder = Path(folder)
        for name in (EGRESS_FILE, STORAGE_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"price file {folder / name} not found (expected {EGRESS_FILE} and "
                                        f"{STORAGE_FILE} in {folder})")
        egress = _read_egress(folder / EGRESS_FILE)
        storage, get_request, put_request = _read_standard_tier(folder / STORAGE_FILE)
        return cls(storage, egress, get_request, put_request, source=str(folder))

    def _zone_aliases(self) -> dict[str, str]:
        """``gcp:us-central1`` -> ``gcp:us-central1-a`` when the tables hold exactly one zone of that region."""
        zones: dict[str, list[str]] = {}
        for cloud in self._storage:
            head, _, zone = cloud.rpartition("-")
            if vendor_of(cloud) == "gcp" and len(zone) == 1 and zone.isalpha():
                zones.setdefault(head, []).append(cloud)
        return {region: found[0] for region, found in zones.items() if len(found) == 1}

    # ---- lookups ------------------------------------------------------------------------------------------

    def resolve(self, cloud: str) -> str:
        """The identity the tables use for ``cloud``, in either spelling (``aws-us-east-1`` is
        ``aws:us-east-1``; zone alias applied); error if it is unknown."""
        identity = cloud_identity(cloud)
        if identity in self._storage:
            return identity
        if identity in self._aliases:
            return self._aliases[identity]
        if self._fallback is not None and identity:
            return identity
        known = both_spellings((c, region_name(c)) for c in self.clouds())
        raise UnknownRegionError(f"no prices for region {cloud!r} in {self.source}; known: {known}")

    def clouds(self) -> list[str]:
        """Identities with table prices (empty for list prices)."""
        return sorted(self._storage)

    def storage_gb_month(self, cloud: str) -> float:
        c = self.resolve(cloud)
        return self._storage[c] if c in self._storage else self._fallback.storage_gb_month

    def storage_gb_second(self, cloud: str) -> float:
        return self.storage_gb_month(cloud) / SECONDS_PER_MONTH

    def egress_gb(self, src: str, dst: str) -> float:
        s, d = self.resolve(src), self.resolve(dst)
        if s == d:
            return 0.0
        if (s, d) in self._egress:
            return self._egress[(s, d)]
        if self._fallback is not None:
            same = vendor_of(s) == vendor_of(d)
            return self._fallback.egress_within_vendor if same else self._fallback.egress_across_vendors
        raise UnknownRegionError(f"no egress price from {src!r} to {dst!r} in {self.source}")

    def get_request(self, cloud: str) -> float:
        return self._request(self._get, cloud, "get_request")

    def put_request(self, cloud: str) -> float:
        return self._request(self._put, cloud, "put_request")

    def _request(self, table: dict[str, float], cloud: str, kind: str) -> float:
        c = self.resolve(cloud)
        if c in table:
            return table[c]
        if self._fallback is not None:
            return getattr(self._fallback, kind)
        return 0.0  # explicit tables without a request price: requests are free

    def t_even(self, src: str, dst: str) -> float:
        """Seconds a copy at ``dst`` can be stored for the price of fetching it once more from ``src``:
        egress(src, dst) / storage(dst) per second. ``math.inf`` when storage at ``dst`` is free."""
        egress = self.egress_gb(src, dst)
        per_second = self.storage_gb_second(dst)
        if per_second <= 0:
            return math.inf
        return egress / per_second

    def __repr__(self) -> str:
        return f"Prices(source={self.source!r}, clouds={len(self._storage)})"


def _read_egress(path: Path) -> dict[tuple[str, str], float]:
    with open(path, newline="") as f:
        return {(row["src"].strip(), row["dest"].strip()): float(row["cost"]) for row in csv.DictReader(f)}


def _read_standard_tier(path: Path) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Storage, GET and PUT prices of each region's standard tier, first volume range."""
    best: dict[tuple[str, str], tuple[float, float]] = {}  # (cloud, group) -> (starting range, price)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            vendor = row["Vendor"].strip()
            if STANDARD_TIERS.get(vendor) != row["Tier"].strip():
                continue
            group = row["Group"].strip()
            if group not in ("storage", "get request", "put request"):
                continue
            key = (f"{vendor}:{row['Region'].strip()}", group)
            start = float(row["StartingRange"] or 0)
            if key not in best or start < best[key][0]:  # first range; on ties the first row in the file
                best[key] = (start, float(row["PricePerUnit"]))
    tables: dict[str, dict[str, float]] = {"storage": {}, "get request": {}, "put request": {}}
    for (cloud, group), (_, price) in best.items():
        tables[group][cloud] = price
    return tables["storage"], tables["get request"], tables["put request"]
