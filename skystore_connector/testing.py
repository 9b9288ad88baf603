"""``local_gateway``: the real gateway on loopback over temporary region directories, for tests and trials.

    with local_gateway(["aws-us-east-1", "aws-eu-west-1"]) as gw:
        s3 = gw.client("aws-us-east-1")          # boto3, path-style, signed with the gateway's key
        s3.create_bucket(Bucket="b")
        s3.put_object(Bucket="b", Key="k", Body=b"x")
        gw.client("aws-eu-west-1").get_object(Bucket="b", Key="k")   # replicate-on-read
        assert gw.has_copy("aws-eu-west-1", "b", "k")

Every region gets its own directory and its own listener (``endpoint(region)``); the main listener
(``endpoint()``) places clients by their SigV4 region. Regions may be named in either spelling
(``aws-us-east-1`` or ``aws:us-east-1``). The gateway serves from a background thread; no
background sweeper runs (call ``gw.store.sweep()``, with an injected ``clock`` to move time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .config import Config
from .region_names import cloud_identity
from .server import GatewayServer


class LocalGateway:
    def __init__(self, server: GatewayServer, root: Path, access_key: str, secret_key: str):
        self.server = server
        self.store = server.store
        self.config: Config = server.config
        self.root = root
        self.access_key = access_key
        self.secret_key = secret_key

    @property
    def regions(self) -> list[str]:
        return list(self.config.regions)

    def endpoint(self, region: str | None = None) -> str:
        """The URL a client in ``region`` uses (the main listener for None)."""
        return self.server.endpoint(None if region is None else self.config.resolve_region(region))

    def region_dir(self, region: str) -> Path:
        return Path(self.config.regions[self.config.resolve_region(region)].url)

    def has_copy(self, region: str, bucket: str, key: str) -> bool:
        """Whether ``region``'s directory holds a ready, unexpired copy of the key's current version."""
        found = self.store.meta.current(bucket, key)
        if found is None:
            return False
        now, region = self.store.clock(), self.config.resolve_region(region)
        return any(c.region == region and c.live(now) and (self.region_dir(region) / c.path).is_file()
                   for c in found[1])

    def client(self, region: str | None = None, *, access_key: str | None = None, **config_options):
        """A boto3 S3 client of a client in ``region`` (path-style, few retries), signing with the gateway's
        first key or with ``access_key`` (one of ``local_gateway``'s ``access_keys``)."""
        import boto3
        from botocore.config import Config as BotoConfig

        options = {"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 2, "mode": "standard"},
                   "connect_timeout": 5, "read_timeout": 60}
        options.update(config_options)
        region = self.config.default_region if region is None else self.config.resolve_region(region)
        key = access_key or self.access_key
        return boto3.client("s3", endpoint_url=self.endpoint(region), aws_access_key_id=key,
                            aws_secret_access_key=self.config.access_keys[key], region_name=region,  # dash form
                            config=BotoConfig(**options))

    def raw(self, method: str, path: str, *, body: bytes = b"", headers=None, query: str = "",
            region: str | None = None, access_key: str | None = None, sign: bool = True):
        """One request sent as is (httpx), signed by botocore's SigV4 signer unless ``sign`` is False: for
        what boto3 will not send (odd headers, raw XML, unicode header bytes, browser-style requests)."""
        import httpx
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        region = self.config.default_region if region is None else self.config.resolve_region(region)
        url = self.endpoint(region) + path + (f"?{query}" if query else "")
        headers = dict(headers or {})
        if sign:
            key = access_key or self.access_key
            request = AWSRequest(method=method, url=url, data=body, headers=headers)
            S3SigV4Auth(Credentials(key, self.config.access_keys[key]), "s3", region).add_auth(request)
            prepared = request.prepare()
            url, headers = prepared.url, dict(prepared.headers)
        # non-ASCII header text goes out as UTF-8 bytes (signed as that text, as SDKs do)
        headers = {k: v.encode() if isinstance(v, str) and not v.isascii() else v for k, v in headers.items()}
        return httpx.request(method, url, headers=headers, content=body, timeout=30)


def _clouds(regions: Sequence[str], clouds: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if clouds is None:
        return {name: cloud_identity(name) for name in regions}
    if isinstance(clouds, Mapping):
        return {name: clouds.get(name) or cloud_identity(name) for name in regions}
    if len(clouds) != len(regions):
        raise ValueError("clouds must name one cloud per region")
    return dict(zip(regions, clouds))


@contextlib.contextmanager
def local_gateway(regions: Sequence[str] = ("aws-us-east-1", "aws-eu-west-1"), *,
                  clouds: Mapping[str, str] | Sequence[str] | None = None, policy: str = "learned",
                  clock=None, access_keys: Mapping[str, str] | None = None,
                  **config_overrides) -> Iterator[LocalGateway]:
    """Start the gateway on loopback (free ports) with one temporary directory per region; stop it and
    delete everything on exit. ``config_overrides`` are ``Config`` settings (``min_part_size=...``,
    ``grants=...``); ``access_keys`` are more keys besides the generated first one (``gw.client(access_key=)``)."""
    from .store import SkyStore

    names = list(regions)
    access_key = "SKYTEST" + secrets.token_hex(6).upper()
    secret_key = secrets.token_urlsafe(30)
    with tempfile.TemporaryDirectory(prefix="skystore-") as tmp:
        keys = {access_key: secret_key, **(access_keys or {})}
        config = Config.local(tmp, regions=_clouds(names, clouds), access_keys=keys,
                              policy=policy, **config_overrides)
        # one listener per region (port 0: a free one), so endpoint(region) places its clients
        config.regions = {name: dataclasses.replace(rc, port=0) for name, rc in config.regions.items()}
        store = SkyStore(config, clock=clock or time.time)
        try:
            server = GatewayServer(config, store=store, sweeper=False).start()
            try:
                yield LocalGateway(server, Path(tmp), access_key, secret_key)
            finally:
                server.stop()
        finally:
            store.close()
