"""``Call``: one request as the handlers see it: who signed it and from which region, its query, its
body (streamed, verified against the signature), and access checks on the bucket it names."""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from anyio import to_thread

from .. import errors
from ..access import authorize
from ..metadata import BucketInfo
from ..sigv4 import SignedRequest, check_content_md5, verified_body
from .bodies import RequestBody, capped
from .s3xml import add, parse_xml

MAX_XML_BODY = 4 * 1024 * 1024  # CompleteMultipartUpload with 10,000 parts fits comfortably


def run(func, *args, **kwargs):
    """Run a blocking store call in a worker thread."""
    return to_thread.run_sync(lambda: func(*args, **kwargs))


class Call:
    def __init__(self, gateway, request, request_id: str, raw_path: bytes, body: RequestBody):
        self.gateway = gateway
        self.store = gateway.store
        self.config = gateway.config
        self.request = request
        self.headers = request.headers
        self.method = request.method
        self.request_id = request_id
        self.raw_path = raw_path
        self.raw_query = request.scope.get("query_string", b"").decode("latin-1")
        self.body = body
        self.signed: SignedRequest | None = None  # None for the unsigned kinds: preflight, browser POST
        self.region = gateway.region or gateway.config.default_region
        self.query: dict[str, str] = {}

    @property
    def access_key(self) -> str:
        return self.signed.access_key

    async def bucket(self, name: str, need: str) -> BucketInfo:
        """The bucket, once the caller's key is known to hold ``need`` on it (NoSuchBucket, AccessDenied)."""
        info = await run(self.store.head_bucket, name)
        authorize(self.store, info, self.access_key, need)
        return info

    def owner(self, parent: ET.Element, tag: str = "Owner", key: str | None = None) -> None:
        owner = add(parent, tag)
        add(owner, "ID", key or self.access_key)
        add(owner, "DisplayName", key or self.access_key)

    # -- bodies --

    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None:
            return None
        try:
            length = int(value)
        except ValueError:
            raise errors.InvalidArgument("Content-Length must be a non-negative integer") from None
        if length < 0:
            raise errors.InvalidArgument("Content-Length must be a non-negative integer")
        return length

    def object_size(self) -> int | None:
        """The decoded size of an uploaded object (None when the client streams without saying)."""
        if self.signed.chunked:
            declared = self.headers.get("x-amz-decoded-content-length")
            if declared is None:
                if self.content_length() is None and "chunked" not in self.headers.get("transfer-encoding", ""):
                    raise errors.MissingContentLength("You must provide the Content-Length HTTP header.")
                return None
            try:
                size = int(declared)
            except ValueError:
                raise errors.InvalidArgument("x-amz-decoded-content-length must be an integer") from None
        else:
            size = self.content_length()
            if size is None:
                if "chunked" not in self.headers.get("transfer-encoding", ""):
                    raise errors.MissingContentLength("You must provide the Content-Length HTTP header.")
                return None
        if size < 0:
            raise errors.InvalidArgument("the object size must not be negative")
        if size > self.config.max_object_size:
            raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed object size.")
        return size

    def upload_stream(self, size: int | None) -> Iterator[bytes]:
        """The verified, decoded body for the store, consumed in a worker thread."""
        max_size = self.config.max_object_size
        limit = None if size is not None else max_size + 64 * 1024 + max_size // 8  # framing of aws-chunked
        self.body.limit = limit
        lower = {k: v for k, v in self.headers.items()}
        stream = verified_body(self.signed, self.body.sync_chunks(), lower)
        if size is not None:
            return stream
        return capped(stream, max_size)

    async def small_body(self, limit: int = MAX_XML_BODY) -> bytes:
        """The whole (small) body, verified against the signature and Content-MD5."""
        blocks = await self.body.read_all(limit)
        lower = {k: v for k, v in self.headers.items()}
        data = b"".join(verified_body(self.signed, blocks, lower))
        md5 = self.headers.get("content-md5")
        if md5:
            if base64.b64decode(check_content_md5(md5)) != hashlib.md5(data).digest():
                raise errors.BadDigest("The Content-MD5 you specified did not match what we received.")
        return data

    async def xml_body(self, root_name: str) -> ET.Element:
        data = await self.small_body()
        if not data.strip():
            raise errors.MalformedXML("The XML you provided was empty.")
        return parse_xml(data, root_name)

    def content_md5(self) -> str | None:
        value = self.headers.get("content-md5")
        return check_content_md5(value.strip()) if value is not None else None
