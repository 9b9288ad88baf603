"""The configuration of a SkyStore gateway: listeners, access keys, regions, metadata, placement policy.

A config is a TOML file (``Config.load(path)``) or built in code (``Config.local(...)`` for tests and trials).
Relative paths in a file are relative to the file's folder. Region names may be written in either spelling
(``aws-us-east-1`` or SkyStore's ``aws:us-east-1``, see ``region_names``): a table ``[regions."aws:us-east-1"]``
and ``default_region = "aws:us-east-1"`` name the region ``aws-us-east-1``.

A bucket belongs to the access key that created it. Other keys get 403 AccessDenied on it unless ``grants``
names them; deleting the bucket and changing its CORS or ACL stay the owner's. ListBuckets lists the buckets
a key owns. A bucket whose creator is no longer a configured key (or made before buckets had owners) belongs
to the first key in ``[access_keys]``, the operator's. A full example::

    host = "127.0.0.1"              # listen address (default 127.0.0.1)
    port = 9000                     # the default region's listener; 0 = pick a free port (default 9000)
    default_region = "aws-us-east-1"  # region of clients no listener or credential places (default: first region)
    state_dir = "state"             # metadata and logs (default: "skystore-state" next to this file)
    metadata_url = "sqlite:///state/metadata.db"  # any SQLAlchemy URL (default: SQLite in state_dir)
    policy = "learned"              # learned | t_even | fixed:SECONDS | always-store | always-evict | replicate-all
    prices_dir = "/data/skystore"   # folder with egress_cost.csv and storage_pricing.csv (default: list prices)
    sweep_interval = 60             # seconds between background sweeps (expired copies, crash leftovers)
    pending_grace = 3600            # seconds before an unfinished write left by a crash is collected
    multipart_expiry = 604800       # seconds before an idle multipart upload is aborted
    max_object_size = 5368709120    # bytes (5 GiB), also the largest part
    min_part_size = 5242880         # bytes (5 MiB): every part of a multipart upload but the last

    [access_keys]                   # access key -> secret key; empty or missing: one is generated and logged
    AKIDEXAMPLE = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"   # the first key: the operator's
    AKIDREADER = "another-secret"
    AKIDWRITER = "yet-another-secret"
    AKIDBACKUP = "and-one-more"

    [grants.shared-data]            # bucket -> access key -> "read" | "write": who besides its owner may use it
    AKIDREADER = "read"             # read: GET/HEAD objects, listings, ACL, CORS and location reads
    AKIDWRITER = "write"            # write: read, plus PUT/DELETE/copy/multipart of objects
    [grants."*"]                    # every bucket
    AKIDBACKUP = "read"

    [regions.aws-us-east-1]         # region name: letters, digits and dashes; "aws:us-east-1" names it too
    cloud = "aws:us-east-1"         # identity in the price files
    url = "regions/aws-us-east-1"   # a local directory, or an fsspec URL (s3://, gs://, az://, memory://, ...)
    port = 9001                     # optional: a listener whose clients are in this region

    [regions.gcp-us-central1]
    cloud = "gcp:us-central1"
    url = "gs://my-skystore/us-central1"
    [regions.gcp-us-central1.storage_options]   # passed to the fsspec filesystem
    project = "my-project"

"""
from __future__ import annotations

import logging
import re
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from .region_names import both_spellings, cloud_identity, find_region, region_name, resolve_region

log = logging.getLogger(__name__)

GiB = 1024**3
MiB = 1024**2
REGION_NAME = re.compile(r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$")
CLOUD_ID = re.compile(r"^[a-z0-9]+:[A-Za-z0-9-]+$")
REGION_KEYS = {"cloud", "url", "port", "storage_options"}
GRANT_LEVELS = ("read", "write")


class ConfigError(ValueError):
    """A config that cannot run a gateway; the message names the offending setting."""


@dataclass(frozen=True)
class RegionConfig:
    name: str
    cloud: str
    url: str
    port: int | None = None
    storage_options: dict = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """A plain directory path (no ``scheme://``) is served by ``LocalRegion``."""
        return "://" not in self.url


@dataclass
class Config:
    state_dir: Path
    regions: dict[str, RegionConfig]
    default_region: str = ""
    host: str = "127.0.0.1"
    port: int = 9000
    access_keys: dict[str, str] = field(default_factory=dict)
    metadata_url: str = ""
    policy: str = "learned"
    prices_dir: Path | None = None
    sweep_interval: float = 60.0
    pending_grace: float = 3600.0
    multipart_expiry: float = 7 * 24 * 3600.0
    max_object_size: int = 5 * GiB
    min_part_size: int = 5 * MiB
    grants: dict[str, dict[str, str]] = field(default_factory=dict)  # bucket or "*" -> access key -> level

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if self.prices_dir is not None:
            self.prices_dir = Path(self.prices_dir)
        self.regions = _keyed_by_region_name(self.regions)
        if not self.default_region and self.regions:
            self.default_region = next(iter(self.regions))
        self.default_region = self.find_region(self.default_region) or self.default_region
        if not self.metadata_url:
            self.metadata_url = f"sqlite:///{self.state_dir / 'metadata.db'}"
        if not self.access_keys:
            key, secret = "SKY" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
            self.access_keys = {key: secret}
            log.warning("no access keys configured; generated access key %s secret %s", key, secret)
        self.validate()

    @property
    def clouds(self) -> dict[str, str]:
        """Region name -> cloud identity (what the policy and prices need)."""
        return {name: r.cloud for name, r in self.regions.items()}

    def find_region(self, text: str) -> str | None:
        """The configured region ``text`` names in either spelling (``aws:us-east-1`` or ``aws-us-east-1``, or
        the cloud identity of just one region); None when it names none."""
        return find_region(text, self.clouds)

    def resolve_region(self, text: str) -> str:
        """``find_region``, or ``UnknownRegionError`` listing the configured regions in both spellings."""
        return resolve_region(text, self.clouds)

    def validate(self) -> None:
        if not self.regions:
            raise ConfigError("no regions configured: add at least one [regions.NAME] table")
        for name, region in self.regions.items():
            if name != region.name:
                raise ConfigError(f"region {name!r} is configured under the name {region.name!r}")
            if not REGION_NAME.match(name):
                raise ConfigError(f"bad region name {name!r}: use letters, digits and dashes (e.g. aws-us-east-1)")
            if not CLOUD_ID.match(region.cloud):
                raise ConfigError(f"region {name!r}: bad cloud {region.cloud!r}, expected vendor:region "
                                  f"(e.g. aws:us-east-1)")
            if not region.url:
                raise ConfigError(f"region {name!r}: url is empty")
        if self.default_region not in self.regions:
            raise ConfigError(f"default_region {self.default_region!r} is not a configured region "
                              f"({both_spellings(self.clouds.items())})")
        ports = [("port", self.port)] + [(f"regions.{n}.port", r.port) for n, r in self.regions.items()]
        seen: dict[int, str] = {}
        for where, port in ports:
            if port is None or port == 0:
                continue
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"{where}: bad port {port!r}")
            if port in seen:
                raise ConfigError(f"{where} and {seen[port]} both use port {port}")
            seen[port] = where
        for label, value in (("sweep_interval", self.sweep_interval), ("pending_grace", self.pending_grace),
                             ("multipart_expiry", self.multipart_expiry)):
            if not value > 0:
                raise ConfigError(f"{label} must be > 0 seconds, got {value!r}")
        if not isinstance(self.grants, Mapping):
            raise ConfigError("grants must be a table of bucket = {access key = \"read\" | \"write\"}")
        for bucket, table in self.grants.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"grants.{bucket} must be a table of access key = \"read\" | \"write\"")
            for key, level in table.items():
                if key not in self.access_keys:
                    raise ConfigError(f"grants.{bucket}: {key!r} is not one of the configured access_keys")
                if level not in GRANT_LEVELS:
                    raise ConfigError(f"grants.{bucket}.{key}: {level!r} is not \"read\" or \"write\"")
        for label, size in (("max_object_size", self.max_object_size), ("min_part_size", self.min_part_size)):
            if not isinstance(size, int) or size <= 0:
                raise ConfigError(f"{label} must be a positive number of bytes, got {size!r}")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        return cls.from_dict(data, base_dir=path.resolve().parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(data)
        regions = values.pop("regions", None)
        if not isinstance(regions, Mapping):
            raise ConfigError("no regions configured: add at least one [regions.NAME] table")
        values["regions"] = {name: _region_from_dict(name, spec, base_dir) for name, spec in regions.items()}
        values["state_dir"] = _resolve(values.get("state_dir", "skystore-state"), base_dir)
        if values.get("prices_dir") is not None:
            values["prices_dir"] = _resolve(values["prices_dir"], base_dir)
        if "access_keys" in values and not isinstance(values["access_keys"], Mapping):
            raise ConfigError("access_keys must be a table of access key = secret key")
        return cls(**values)

    @classmethod
    def local(cls, root_dir: str | Path, regions: Iterable[str] | Mapping[str, str] = ("aws-us-east-1",),
              access_keys: Mapping[str, str] | None = None, **settings: Any) -> "Config":
        """One local-directory region per name under ``root_dir/regions``, state in ``root_dir/state``, port 0.
        ``regions`` lists names in either spelling (the cloud is derived: ``aws-us-east-1`` and ``aws:us-east-1``
        are the region ``aws-us-east-1`` in ``aws:us-east-1``) or maps names to clouds."""
        root = Path(root_dir)
        clouds = dict(regions) if isinstance(regions, Mapping) else {n: cloud_identity(n) for n in regions}
        region_configs = {name: RegionConfig(name, cloud, str(root / "regions" / region_name(name)))
                          for name, cloud in clouds.items()}  # keyed by the dash form in __post_init__
        settings.setdefault("port", 0)
        return cls(state_dir=root / "state", regions=region_configs, access_keys=dict(access_keys or {}),
                   **settings)


def _keyed_by_region_name(regions: Mapping[str, RegionConfig]) -> dict[str, RegionConfig]:
    """The regions under their dash-form names, so ``aws:us-east-1`` and ``aws-us-east-1`` are one region."""
    out: dict[str, RegionConfig] = {}
    spelled: dict[str, str] = {}  # dash-form name -> the key it was given under
    for key, region in regions.items():
        name = region_name(key)
        if name in out:
            raise ConfigError(f"region {key!r} is configured twice (also as {spelled[name]!r})")
        spelled[name] = key
        out[name] = replace(region, name=region_name(region.name))
    return out


def _region_from_dict(name: str, spec: Any, base_dir: Path) -> RegionConfig:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"regions.{name} must be a table")
    unknown = sorted(set(spec) - REGION_KEYS)
    if unknown:
        raise ConfigError(f"regions.{name}: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(REGION_KEYS))})")
    for required in ("cloud", "url"):
        if not isinstance(spec.get(required), str):
            raise ConfigError(f"regions.{name}: {required} (a string) is required")
    url = spec["url"]
    if "://" not in url:
        url = str(_resolve(url, base_dir))
    options = spec.get("storage_options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"regions.{name}.storage_options must be a table")
    return RegionConfig(name, spec["cloud"], url, spec.get("port"), dict(options))


def _resolve(value: Any, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path
