"""The fsspec filesystem for ``skystore://bucket/key``: s3fs pointed at a SkyStore gateway.

    fs = fsspec.filesystem("skystore", endpoint_url="http://127.0.0.1:9000", key="AK", secret="SK",
                           region="aws-us-east-1")
    pandas.read_parquet("skystore://b/t.parquet", storage_options={"endpoint_url": ..., "key": ..., ...})
    duckdb.register_filesystem(fs); duckdb.sql("SELECT * FROM read_parquet('skystore://b/t.parquet')")

Every argument falls back to an environment variable: ``endpoint_url`` to ``SKYSTORE_ENDPOINT``, ``key`` to
``SKYSTORE_ACCESS_KEY``, ``secret`` to ``SKYSTORE_SECRET_KEY``, ``region`` to ``SKYSTORE_REGION``. The region
goes into the SigV4 credential scope, in either spelling (``aws:us-east-1`` is sent as ``aws-us-east-1``, the
form botocore accepts); the gateway takes the client's region from the listener it connected to first, so with
one endpoint per region it may be left out. Other keyword arguments go to ``S3FileSystem``.

The protocol is registered through the ``fsspec.specs`` entry point of the package.
"""

from __future__ import annotations

import os
from typing import Any

from s3fs import S3FileSystem

from .region_names import region_name

DEFAULT_REGION = "us-east-1"

_ENV = {"endpoint_url": "SKYSTORE_ENDPOINT", "key": "SKYSTORE_ACCESS_KEY", "secret": "SKYSTORE_SECRET_KEY",
        "region": "SKYSTORE_REGION"}


class SkyStoreConfigError(ValueError):
    """No gateway endpoint (or no credentials) given and none in the environment."""


def _resolve(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill unset arguments from the environment."""
    out = dict(kwargs)
    for arg, env in _ENV.items():
        if out.get(arg) is None and os.environ.get(env):
            out[arg] = os.environ[env]
    return out


class _ResolvedBeforeCaching(type(S3FileSystem)):
    # fsspec caches instances by their constructor arguments: resolve the environment first, so two gateways
    # named by SKYSTORE_ENDPOINT at different times never share an instance.
    def __call__(cls, *args, **kwargs):
        return super().__call__(*args, **_resolve(kwargs))


class SkyStoreFileSystem(S3FileSystem, metaclass=_ResolvedBeforeCaching):
    """``skystore://bucket/key`` through a SkyStore gateway (path-style S3, SigV4)."""

    protocol = ("skystore",)

    def __init__(self, endpoint_url: str | None = None, key: str | None = None, secret: str | None = None,
                 region: str | None = None, **kwargs: Any):
        if not endpoint_url:
            raise SkyStoreConfigError(
                "skystore:// needs a gateway: pass endpoint_url='http://host:port' (storage_options="
                "{'endpoint_url': ...} for pandas) or set SKYSTORE_ENDPOINT")
        if not (key and secret):  # the gateway refuses unsigned requests
            raise SkyStoreConfigError(
                "skystore:// needs credentials: pass key= and secret= or set SKYSTORE_ACCESS_KEY and "
                "SKYSTORE_SECRET_KEY")
        client_kwargs = dict(kwargs.pop("client_kwargs", None) or {})
        client_kwargs["region_name"] = region_name(client_kwargs.get("region_name") or region or DEFAULT_REGION)
        config_kwargs = dict(kwargs.pop("config_kwargs", None) or {})
        s3_config = dict(config_kwargs.get("s3") or {})
        s3_config.setdefault("addressing_style", "path")  # buckets are paths, the gateway has no DNS names
        config_kwargs["s3"] = s3_config
        # botocore >= 1.36 adds CRC checksums to every upload by default, for streamed bodies as aws-chunked
        # framing with trailers. Our gateway decodes that too, but "when_required" keeps bodies plain (checked
        # by the SigV4 payload hash and Content-MD5), so any S3-compatible server behind an endpoint works and
        # no CRC is computed twice per upload.
        config_kwargs.setdefault("request_checksum_calculation", "when_required")
        config_kwargs.setdefault("response_checksum_validation", "when_required")
        kwargs.setdefault("use_ssl", endpoint_url.startswith("https://"))
        super().__init__(endpoint_url=endpoint_url, key=key, secret=secret, client_kwargs=client_kwargs,
                         config_kwargs=config_kwargs, **kwargs)
        self.region = client_kwargs["region_name"]
