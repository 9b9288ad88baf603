"""The S3 HTTP API (path-style ``/bucket/key``) over a ``SkyStore``, as an ASGI app (Starlette).

``make_app(store, region=None)`` returns the app of one listener; ``region`` fixes the region of its clients
(otherwise: the SigV4 credential scope's region when it names a configured one, else the default region).
Region names from clients (the SigV4 scope, CreateBucket's LocationConstraint) may use either spelling,
``aws-us-east-1`` or ``aws:us-east-1`` (``region_names``).

Every request is authenticated with SigV4 (``sigv4.py``) before anything else happens. Store calls block
(SQLite and files), so they run in worker threads; request bodies stream from the socket into the store
through ``_RequestBody`` (a worker thread pulls blocks from the event loop), and object bodies stream out
through ``ObjectStreamResponse`` (a worker thread reads the next ~2 MiB while the last ones are sent). Errors
become S3 XML errors (``errors.py``); HEAD errors have no body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote, unquote, unquote_to_bytes

import anyio
from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import errors
from .errors import S3Error
from .sigv4 import SignedRequest, SigV4Verifier, check_content_md5, parse_query, verified_body

log = logging.getLogger(__name__)

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEY_BYTES = 1024
MAX_XML_BODY = 4 * 1024 * 1024  # CompleteMultipartUpload with 10,000 parts fits comfortably
MAX_DELETE_KEYS = 1000
MAX_PART_NUMBER = 10000
RECEIVE_BLOCK = 1024 * 1024  # request bytes handed to the store per hop to a worker thread
SEND_BLOCK = 2 * 1024 * 1024  # response bytes per worker-thread read: small enough to stay in cache
DRAIN_LIMIT = 16 * 1024 * 1024  # unread request bytes swallowed before an error so the client sees the error
DRAIN_SECONDS = 2.0
BODY_IDLE_SECONDS = 300.0  # a worker thread waiting this long for request bytes gives up on the upload
# Sub-resources of buckets and objects this gateway does not implement (answered with NotImplemented).
UNSUPPORTED_SUBRESOURCES = {
    "acl", "policy", "cors", "lifecycle", "tagging", "website", "logging", "notification", "replication",
    "encryption", "object-lock", "retention", "legal-hold", "torrent", "restore", "select", "versions",
    "requestPayment", "accelerate", "analytics", "inventory", "metrics", "intelligent-tiering",
    "ownershipControls", "publicAccessBlock", "policyStatus", "attributes",
}


class _NotModified(Exception):
    """If-None-Match / If-Modified-Since hit: 304 with the object's ETag."""

    def __init__(self, etag: str):
        self.etag = etag


# --- formatting helpers ------------------------------------------------------------------------------------


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def header_value(value: str) -> str:
    """HTTP header values are latin-1; S3 sends other text RFC 2047 encoded, and so do we."""
    try:
        value.encode("latin-1")
        return value
    except UnicodeEncodeError:
        return "=?UTF-8?B?" + base64.b64encode(value.encode()).decode() + "?="


def xml_response(root: ET.Element, request_id: str, status: int = 200) -> Response:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return Response(body, status, {"x-amz-request-id": request_id, "content-type": "application/xml"})


def xml_root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=S3_NS)


# Characters XML 1.0 cannot carry at all (even escaped); S3 keys may hold them. They are percent-encoded.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return _XML_INVALID.sub(lambda m: f"%{ord(m.group()):02X}" if m.group() < " " else f"\\u{ord(m.group()):04x}", text)


def add(parent: ET.Element, tag: str, text=None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = xml_text(text)
    return child


def error_response(error: S3Error, request_id: str, resource: str, *, head: bool = False) -> Response:
    headers = {"x-amz-request-id": request_id}
    if head:  # HEAD responses never carry a body; the status tells the client what happened
        return Response(b"", error.status, headers)
    root = ET.Element("Error")
    add(root, "Code", error.code)
    add(root, "Message", error.message)
    add(root, "Resource", error.resource or resource)
    add(root, "RequestId", request_id)
    headers["content-type"] = "application/xml"
    return Response(ET.tostring(root, encoding="utf-8", xml_declaration=True), error.status, headers)


def local_name(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if local_name(c) == name]


def child_text(element: ET.Element, name: str, default: str | None = None) -> str | None:
    found = children(element, name)
    return (found[0].text or "") if found else default


def parse_xml(body: bytes, root_name: str) -> ET.Element:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise errors.MalformedXML("The XML you provided was not well-formed or did not validate against our "
                                  "published schema.") from None
    if local_name(root) != root_name:
        raise errors.MalformedXML(f"expected a <{root_name}> document")
    return root


# --- request pieces ----------------------------------------------------------------------------------------


def split_path(raw_path: bytes) -> tuple[str, str]:
    """``/bucket/key`` -> (bucket, key), both percent-decoded UTF-8."""
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidURI("Couldn't parse the specified URI: the path is not UTF-8.") from None
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def check_key(key: str) -> None:
    if len(key.encode()) > MAX_KEY_BYTES:
        raise errors.KeyTooLongError("Your key is too long")
    if "\x00" in key:
        raise errors.InvalidObjectName("Object key must not contain NUL characters")
    if ".." in key.split("/"):
        raise errors.InvalidObjectName("Object key must not contain '..' path segments")


def user_metadata(headers) -> dict[str, str]:
    return {name[len("x-amz-meta-"):]: value for name, value in headers.items() if name.startswith("x-amz-meta-")}


def parse_int(value: str | None, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise errors.InvalidArgument(f"{name} must be an integer") from None
    if number < low:
        raise errors.InvalidArgument(f"{name} must be at least {low}")
    return min(number, high) if high is not None else number


def parse_part_number(value: str | None) -> int:
    try:
        number = int(value or "")
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PART_NUMBER:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    return number


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``a-`` / ``-n`` -> inclusive (start, end); None for no (or an unusable) Range header,
    which S3 answers with the whole object; InvalidRange when the range starts past the end."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise errors.InvalidRange("The requested range is not satisfiable")
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        raise errors.InvalidRange("The requested range is not satisfiable")
    if end < start:
        return None
    return start, min(end, size - 1)


def parse_copy_source(value: str) -> tuple[str, str]:
    source = value.strip()
    source, _, version = source.partition("?")
    if version and version not in ("versionId=null", "versionId="):
        raise errors.NotImplementedOp("copying a specific version is not supported")
    bucket, _, key = unquote(source).lstrip("/").partition("/")
    if not bucket or not key:
        raise errors.InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey")
    check_key(key)
    return bucket, key


def check_preconditions(headers, etag: str, last_modified: float) -> None:
    """If-Match / If-Unmodified-Since (412) and If-None-Match / If-Modified-Since (304), as RFC 7232 orders them."""
    bare = etag.strip('"')

    def matches(header: str) -> bool:
        tags = {t.strip().strip('"') for t in header.split(",")}
        return "*" in tags or bare in tags

    def since(header: str) -> float | None:
        try:
            return parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError, IndexError):
            return None

    if_match, if_none = headers.get("if-match"), headers.get("if-none-match")
    if if_match is not None and not matches(if_match):
        raise errors.PreconditionFailed("At least one of the pre-conditions you specified did not hold",
                                 resource="If-Match")
    unmodified = since(headers.get("if-unmodified-since", ""))
    if if_match is None and unmodified is not None and int(last_modified) > unmodified:
        raise errors.PreconditionFailed("At least one of the pre-conditions you specified did not hold",
                                 resource="If-Unmodified-Since")
    if if_none is not None and matches(if_none):
        raise _NotModified(etag)
    modified = since(headers.get("if-modified-since", ""))
    if if_none is None and modified is not None and int(last_modified) <= modified:
        raise _NotModified(etag)


def object_headers(info, request_id: str) -> dict[str, str]:
    headers = {
        "x-amz-request-id": request_id,
        "etag": quote_etag(info.etag),
        "last-modified": http_date(info.last_modified),
        "content-type": header_value(info.content_type or "binary/octet-stream"),
        "accept-ranges": "bytes",
    }
    for name, value in (info.metadata or {}).items():
        headers["x-amz-meta-" + name] = header_value(value)
    return headers


RESPONSE_OVERRIDES = {"response-content-type": "content-type", "response-content-language": "content-language",
                      "response-expires": "expires", "response-cache-control": "cache-control",
                      "response-content-disposition": "content-disposition",
                      "response-content-encoding": "content-encoding"}


def encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidArgument("The continuation token provided is incorrect") from None


# --- request and response bodies ---------------------------------------------------------------------------


class _RequestBody:
    """The request body, read from the ASGI ``receive`` channel in blocks of about ``RECEIVE_BLOCK`` bytes.

    ``sync_chunks()`` is consumed in any thread but the event loop's (where the store runs): each block is
    fetched by running ``_next_block`` on the event loop, so the body streams with one thread hop per block.
    """

    def __init__(self, receive, loop: asyncio.AbstractEventLoop):
        self._receive = receive
        self._loop = loop
        self.limit: int | None = None  # the most bytes accepted (EntityTooLarge past it)
        self.received = 0
        self.done = False
        self.started = False

    async def _next_block(self) -> list[bytes]:
        """The pieces received next, about ``RECEIVE_BLOCK`` bytes in all (not joined: no copy); [] at the end."""
        self.started = True
        pieces, size = [], 0
        while not self.done and size < RECEIVE_BLOCK:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.done = True
                raise errors.IncompleteBody("the client disconnected before sending the whole body")
            piece = message.get("body", b"")
            if piece:
                pieces.append(piece)
                size += len(piece)
            self.done = not message.get("more_body", False)
        self.received += size
        if self.limit is not None and self.received > self.limit:
            raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed object size.")
        return pieces

    def sync_chunks(self) -> Iterator[bytes]:
        while True:
            future = asyncio.run_coroutine_threadsafe(self._next_block(), self._loop)
            try:
                pieces = future.result(BODY_IDLE_SECONDS)
            except TimeoutError:  # concurrent.futures' TimeoutError is the builtin one since 3.11
                future.cancel()
                raise errors.IncompleteBody(f"no request body bytes for {BODY_IDLE_SECONDS} s") from None
            if not pieces:
                return
            yield from pieces

    async def read_all(self, limit: int) -> list[bytes]:
        blocks = []
        while pieces := await self._next_block():
            blocks.extend(pieces)
            if self.received > limit:
                raise errors.MaxMessageLengthExceeded("Your request was too big.")
        return blocks

    async def drain(self) -> None:
        """Swallow what is left of a modest body (briefly) so the client reads our error rather than a reset
        socket; past ``DRAIN_LIMIT`` bytes or ``DRAIN_SECONDS`` the connection is closed after the error."""
        try:
            with anyio.move_on_after(DRAIN_SECONDS):
                while not self.done and self.received < DRAIN_LIMIT:
                    if not await self._next_block():
                        break
        except Exception:  # noqa: BLE001 - best effort; the error response is what matters
            pass


class ObjectStreamResponse(Response):
    """An object body streamed in pieces of about ``SEND_BLOCK`` bytes, each gathered in one worker-thread hop
    (pieces are sent as the store yields them, never joined: no extra copy of the object). The first batch is
    read before the response starts (``prefetch``), so a failing read is still a proper S3 error."""

    def __init__(self, chunks: Iterator[bytes], status: int, headers: dict[str, str], length: int):
        self._chunks = chunks
        self._first: list[bytes] = []
        self.status_code = status
        self.background = None
        self.body = b""
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(length).encode()))
        self.raw_headers = raw

    @staticmethod
    def _read_batch(chunks: Iterator[bytes]) -> list[bytes]:
        pieces, size = [], 0
        for piece in chunks:
            if piece:
                pieces.append(piece)
                size += len(piece)
                if size >= SEND_BLOCK:
                    break
        return pieces

    async def prefetch(self) -> None:
        self._first = await to_thread.run_sync(self._read_batch, self._chunks)

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        reading: asyncio.Task | None = None
        try:
            batch = self._first
            while batch:
                # read the next batch while this one goes out: disk and socket work overlap
                reading = asyncio.ensure_future(to_thread.run_sync(self._read_batch, self._chunks))
                for piece in batch:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                batch = await reading
                reading = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if reading is not None:  # the client went away mid-send: let the read finish before closing
                with contextlib.suppress(Exception):
                    await reading
            close = getattr(self._chunks, "close", None)
            if close is not None:
                await to_thread.run_sync(close)


# --- the app -----------------------------------------------------------------------------------------------


def make_app(store, *, region: str | None = None, verifier: SigV4Verifier | None = None) -> Starlette:
    """The S3 API over ``store`` for one listener; ``region`` fixes its clients' region."""
    gateway = S3Gateway(store, region=region, verifier=verifier)
    route = Route("/{path:path}", gateway.handle, methods=["GET", "HEAD", "PUT", "POST", "DELETE"])
    app = Starlette(routes=[route])
    app.state.gateway = gateway
    return app


class S3Gateway:
    def __init__(self, store, *, region: str | None = None, verifier: SigV4Verifier | None = None):
        self.store = store
        self.config = store.config
        self.region = None if region is None else self.config.resolve_region(region)
        self.verifier = verifier or SigV4Verifier(self.config.access_keys)

    async def handle(self, request: Request) -> Response:
        request_id = secrets.token_hex(8).upper()
        raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        resource = unquote(raw_path.decode("latin-1"))
        head = request.method == "HEAD"
        body = _RequestBody(request.receive, asyncio.get_running_loop())
        if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
            body.done = True  # nothing to read (and nothing to drain before an error)
        try:
            call = _Call(self, request, request_id, raw_path, body)
            response = await call.dispatch()
        except S3Error as e:
            log.debug("%s %s -> %s %s", request.method, resource, e.status, e.code)
            await self._settle_body(request, body)
            response = error_response(e, request_id, resource, head=head)
        except _NotModified as e:
            response = Response(b"", 304, {"etag": quote_etag(e.etag)})
        except Exception:  # a bug or an unexpected failure: S3's 500, logged with its traceback
            log.exception("%s %s failed", request.method, resource)
            response = error_response(errors.InternalError("We encountered an internal error. Please try again."),
                                      request_id, resource, head=head)
        if not body.done:  # unread body bytes would be taken for the next request: end the connection
            response.headers["connection"] = "close"
        response.headers.setdefault("x-amz-request-id", request_id)
        return response

    @staticmethod
    async def _settle_body(request: Request, body: _RequestBody) -> None:
        """Before an error: swallow a modest unread body so the client reads the error, not a reset socket.
        A client waiting for "100 Continue" has sent nothing yet and sends nothing once it sees the error."""
        expects_continue = "100-continue" in request.headers.get("expect", "").lower()
        declared = request.headers.get("content-length", "")
        too_big = declared.isdigit() and int(declared) - body.received > DRAIN_LIMIT
        if not body.done and not too_big and (body.started or not expects_continue):
            await body.drain()

    def client_region(self, signed: SignedRequest) -> str:
        if self.region is not None:
            return self.region
        return self.config.find_region(signed.region) or self.config.default_region


def run(func, *args, **kwargs):
    """Run a blocking store call in a worker thread."""
    return to_thread.run_sync(lambda: func(*args, **kwargs))


class _Call:
    """One request: ``dispatch`` authenticates it, then routes it by method, path depth and query."""

    def __init__(self, gateway: S3Gateway, request: Request, request_id: str, raw_path: bytes, body: _RequestBody):
        self.gateway = gateway
        self.store = gateway.store
        self.request = request
        self.headers = request.headers
        self.method = request.method
        self.request_id = request_id
        self.raw_path = raw_path
        self.raw_query = request.scope.get("query_string", b"").decode("latin-1")
        self.body = body
        self.signed: SignedRequest | None = None
        self.region = ""
        self.query: dict[str, str] = {}

    async def dispatch(self) -> Response:
        self.signed = self.gateway.verifier.verify(self.method, self.raw_path.decode("latin-1"), self.raw_query,
                                                   self.request.headers.items())
        self.region = self.gateway.client_region(self.signed)
        for name, value in parse_query(self.raw_query):
            self.query.setdefault(name, value)
        bucket, key = split_path(self.raw_path)
        unsupported = UNSUPPORTED_SUBRESOURCES & self.query.keys()
        if unsupported and bucket:
            raise errors.NotImplementedOp(f"the ?{sorted(unsupported)[0]} sub-resource is not implemented")
        if not bucket:
            if self.method in ("GET", "HEAD"):
                return await self.list_buckets()
            raise errors.MethodNotAllowed("The specified method is not allowed against this resource.")
        if not key:
            return await self.bucket_operation(bucket)
        check_key(key)
        return await self.object_operation(bucket, key)

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
        if size > self.gateway.config.max_object_size:
            raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed object size.")
        return size

    def upload_stream(self, size: int | None) -> Iterator[bytes]:
        """The verified, decoded body for the store, consumed in a worker thread."""
        max_size = self.gateway.config.max_object_size
        limit = None if size is not None else max_size + 64 * 1024 + max_size // 8  # framing of aws-chunked
        self.body.limit = limit
        lower = {k: v for k, v in self.headers.items()}
        stream = verified_body(self.signed, self.body.sync_chunks(), lower)
        if size is not None:
            return stream
        return _capped(stream, max_size)

    async def xml_body(self, root_name: str) -> ET.Element:
        blocks = await self.body.read_all(MAX_XML_BODY)
        lower = {k: v for k, v in self.headers.items()}
        data = b"".join(verified_body(self.signed, blocks, lower))
        md5 = self.headers.get("content-md5")
        if md5:
            if base64.b64decode(check_content_md5(md5)) != hashlib.md5(data).digest():
                raise errors.BadDigest("The Content-MD5 you specified did not match what we received.")
        if not data.strip():
            raise errors.MalformedXML("The XML you provided was empty.")
        return parse_xml(data, root_name)

    def content_md5(self) -> str | None:
        value = self.headers.get("content-md5")
        return check_content_md5(value.strip()) if value is not None else None

    # -- service --

    async def list_buckets(self) -> Response:
        buckets = await run(self.store.list_buckets)
        root = xml_root("ListAllMyBucketsResult")
        self.owner(root)
        listing = add(root, "Buckets")
        for info in buckets:
            entry = add(listing, "Bucket")
            add(entry, "Name", info.name)
            add(entry, "CreationDate", iso_date(info.created))
            add(entry, "BucketRegion", info.region)
        return xml_response(root, self.request_id)

    def owner(self, parent: ET.Element, tag: str = "Owner") -> None:
        owner = add(parent, tag)
        add(owner, "ID", self.signed.access_key)
        add(owner, "DisplayName", self.signed.access_key)

    # -- buckets --

    async def bucket_operation(self, bucket: str) -> Response:
        q, method = self.query, self.method
        if method == "PUT":
            if q:
                raise errors.NotImplementedOp(f"PUT ?{next(iter(q))} on a bucket is not implemented")
            return await self.create_bucket(bucket)
        if method == "DELETE":
            if q:
                raise errors.NotImplementedOp(f"DELETE ?{next(iter(q))} on a bucket is not implemented")
            await run(self.store.delete_bucket, bucket)
            return Response(b"", 204)
        if method == "HEAD":
            info = await run(self.store.head_bucket, bucket)
            return Response(b"", 200, {"x-amz-bucket-region": info.region})
        if method == "POST":
            if "delete" in q:
                return await self.delete_objects(bucket)
            raise errors.NotImplementedOp("this POST on a bucket is not implemented")
        # GET
        if "location" in q:
            info = await run(self.store.head_bucket, bucket)
            root = ET.Element("LocationConstraint", xmlns=S3_NS)
            root.text = info.region
            return xml_response(root, self.request_id)
        if "versioning" in q:
            await run(self.store.head_bucket, bucket)
            return xml_response(xml_root("VersioningConfiguration"), self.request_id)
        if "uploads" in q:
            return await self.list_uploads(bucket)
        if q.get("list-type") == "2":
            return await self.list_objects(bucket, v2=True)
        return await self.list_objects(bucket, v2=False)

    async def create_bucket(self, bucket: str) -> Response:
        region = self.region
        blocks = await self.body.read_all(MAX_XML_BODY)
        data = b"".join(verified_body(self.signed, blocks, {k: v for k, v in self.headers.items()}))
        if data.strip():
            constraint = child_text(parse_xml(data, "CreateBucketConfiguration"), "LocationConstraint")
            # a configured region named explicitly wins; other names (AWS's) are hints
            region = (constraint and self.gateway.config.find_region(constraint)) or region
        await run(self.store.create_bucket, bucket, region)
        return Response(b"", 200, {"location": "/" + bucket})

    async def list_objects(self, bucket: str, *, v2: bool) -> Response:
        q = self.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = parse_int(q.get("max-keys"), "max-keys", 1000, high=1000)
        encode = q.get("encoding-type")
        if encode not in (None, "", "url"):
            raise errors.InvalidArgument("Invalid Encoding Method specified in Request")
        if v2:
            token = q.get("continuation-token")
            marker = decode_token(token) if token else q.get("start-after", "")
        else:
            marker = q.get("marker", "")
        result = await run(self.store.list_objects, bucket, prefix=prefix, delimiter=delimiter or None,
                           marker=marker or None, max_keys=max_keys)

        def text(value: str) -> str:
            return quote(value, safe="/") if encode == "url" else value

        root = xml_root("ListBucketResult")
        add(root, "Name", bucket)
        add(root, "Prefix", text(prefix))
        if v2:
            if q.get("continuation-token"):
                add(root, "ContinuationToken", q["continuation-token"])
            if q.get("start-after"):
                add(root, "StartAfter", text(q["start-after"]))
            add(root, "KeyCount", len(result.objects) + len(result.common_prefixes))
        else:
            add(root, "Marker", text(marker))
        add(root, "MaxKeys", max_keys)
        if delimiter:
            add(root, "Delimiter", text(delimiter))
        if encode:
            add(root, "EncodingType", encode)
        add(root, "IsTruncated", bool(result.is_truncated))
        if result.is_truncated and result.next_marker:
            if v2:
                add(root, "NextContinuationToken", encode_token(result.next_marker))
            else:
                add(root, "NextMarker", text(result.next_marker))
        for info in result.objects:
            entry = add(root, "Contents")
            add(entry, "Key", text(info.key))
            add(entry, "LastModified", iso_date(info.last_modified))
            add(entry, "ETag", quote_etag(info.etag))
            add(entry, "Size", info.size)
            add(entry, "StorageClass", "STANDARD")
            if not v2 or q.get("fetch-owner") == "true":
                self.owner(entry)
        for common in result.common_prefixes:
            add(add(root, "CommonPrefixes"), "Prefix", text(common))
        return xml_response(root, self.request_id)

    async def delete_objects(self, bucket: str) -> Response:
        document = await self.xml_body("Delete")
        quiet = (child_text(document, "Quiet") or "").strip().lower() == "true"
        keys = [child_text(entry, "Key") for entry in children(document, "Object")]
        if not keys or len(keys) > MAX_DELETE_KEYS or any(k is None or k == "" for k in keys):
            raise errors.MalformedXML("Delete needs between 1 and 1000 <Object><Key> entries")
        await run(self.store.head_bucket, bucket)

        def delete_all() -> list[tuple[str, S3Error | None]]:
            outcome = []
            for key in keys:
                try:
                    check_key(key)
                    self.store.delete_object(bucket, key)
                    outcome.append((key, None))
                except errors.NoSuchKey:
                    outcome.append((key, None))  # deleting what is not there succeeds in S3
                except S3Error as e:
                    outcome.append((key, e))
            return outcome

        root = xml_root("DeleteResult")
        for key, error in await to_thread.run_sync(delete_all):
            if error is None:
                if not quiet:
                    add(add(root, "Deleted"), "Key", key)
            else:
                entry = add(root, "Error")
                add(entry, "Key", key)
                add(entry, "Code", error.code)
                add(entry, "Message", error.message)
        return xml_response(root, self.request_id)

    async def list_uploads(self, bucket: str) -> Response:
        q = self.query
        prefix = q.get("prefix", "")
        max_uploads = parse_int(q.get("max-uploads"), "max-uploads", 1000, high=1000)
        key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        uploads = await run(self.store.list_multipart_uploads, bucket, prefix=prefix)
        uploads = sorted(uploads, key=lambda u: (u.key, u.initiated, u.upload_id))
        if key_marker:
            if id_marker:
                position = next((i + 1 for i, u in enumerate(uploads)
                                 if u.key == key_marker and u.upload_id == id_marker), None)
                uploads = uploads[position:] if position is not None else [u for u in uploads if u.key > key_marker]
            else:
                uploads = [u for u in uploads if u.key > key_marker]
        page, truncated = uploads[:max_uploads], len(uploads) > max_uploads
        root = xml_root("ListMultipartUploadsResult")
        add(root, "Bucket", bucket)
        add(root, "KeyMarker", key_marker)
        add(root, "UploadIdMarker", id_marker)
        add(root, "NextKeyMarker", page[-1].key if truncated else "")
        add(root, "NextUploadIdMarker", page[-1].upload_id if truncated else "")
        add(root, "Prefix", prefix)
        add(root, "MaxUploads", max_uploads)
        add(root, "IsTruncated", truncated)
        for upload in page:
            entry = add(root, "Upload")
            add(entry, "Key", upload.key)
            add(entry, "UploadId", upload.upload_id)
            self.owner(entry, "Initiator")
            self.owner(entry)
            add(entry, "StorageClass", "STANDARD")
            add(entry, "Initiated", iso_date(upload.initiated))
        return xml_response(root, self.request_id)

    # -- objects --

    async def object_operation(self, bucket: str, key: str) -> Response:
        q, method = self.query, self.method
        if method == "PUT":
            if "partNumber" in q or "uploadId" in q:
                if "x-amz-copy-source" in self.headers:
                    return await self.upload_part_copy(bucket, key)
                return await self.upload_part(bucket, key)
            if "x-amz-copy-source" in self.headers:
                return await self.copy_object(bucket, key)
            return await self.put_object(bucket, key)
        if method in ("GET", "HEAD"):
            if "uploadId" in q and method == "GET":
                return await self.list_parts(bucket, key)
            return await self.get_object(bucket, key, head=method == "HEAD")
        if method == "DELETE":
            if "uploadId" in q:
                await run(self.store.abort_multipart_upload, bucket, key, q["uploadId"])
                return Response(b"", 204)
            try:
                await run(self.store.delete_object, bucket, key)
            except errors.NoSuchKey:
                pass  # S3 answers 204 for a key that is not there
            return Response(b"", 204)
        if method == "POST":
            if "uploads" in q:
                return await self.create_upload(bucket, key)
            if "uploadId" in q:
                return await self.complete_upload(bucket, key, q["uploadId"])
            raise errors.NotImplementedOp("this POST on an object is not implemented")
        raise errors.MethodNotAllowed("The specified method is not allowed against this resource.")

    async def put_object(self, bucket: str, key: str) -> Response:
        size = self.object_size()
        md5 = self.content_md5()
        stream = self.upload_stream(size)
        info = await run(self.store.put_object, bucket, key, stream, self.region,
                         content_type=self.headers.get("content-type") or "binary/octet-stream",
                         metadata=user_metadata(self.headers), content_md5=md5, size=size)
        return Response(b"", 200, {"etag": quote_etag(info.etag)})

    async def get_object(self, bucket: str, key: str, *, head: bool) -> Response:
        range_header = self.headers.get("range")
        start = end = None
        if range_header:
            info = await run(self.store.head_object, bucket, key, self.region)
            check_preconditions(self.headers, info.etag, info.last_modified)
            span = parse_range(range_header, info.size)
            if span is not None:
                start, end = span
        if head:
            info = await run(self.store.head_object, bucket, key, self.region)
            check_preconditions(self.headers, info.etag, info.last_modified)
            headers = object_headers(info, self.request_id)
            headers["content-length"] = str(info.size if start is None else end - start + 1)
            status = 200
            if start is not None:
                headers["content-range"] = f"bytes {start}-{end}/{info.size}"
                status = 206
            self.apply_overrides(headers)
            return Response(b"", status, headers)
        info, chunks = await run(self.store.get_object, bucket, key, self.region, start=start, end=end)
        try:
            check_preconditions(self.headers, info.etag, info.last_modified)
        except BaseException:
            close = getattr(chunks, "close", None)
            if close is not None:
                await to_thread.run_sync(close)
            raise
        headers = object_headers(info, self.request_id)
        self.apply_overrides(headers)
        if start is None:
            response = ObjectStreamResponse(chunks, 200, headers, info.size)
        else:
            headers["content-range"] = f"bytes {start}-{end}/{info.size}"
            response = ObjectStreamResponse(chunks, 206, headers, end - start + 1)
        await response.prefetch()
        return response

    def apply_overrides(self, headers: dict[str, str]) -> None:
        for param, header in RESPONSE_OVERRIDES.items():
            if param in self.query:
                headers[header] = header_value(self.query[param])

    async def copy_object(self, bucket: str, key: str) -> Response:
        src_bucket, src_key = parse_copy_source(self.headers["x-amz-copy-source"])
        directive = self.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise errors.InvalidArgument("Unknown metadata directive.")
        metadata = content_type = None
        if directive == "REPLACE":
            metadata = user_metadata(self.headers)
            content_type = self.headers.get("content-type") or "binary/octet-stream"
        elif (src_bucket, src_key) == (bucket, key):
            raise errors.InvalidRequest("This copy request is illegal because it is trying to copy an object to "
                                        "itself without changing the object's metadata, storage class, website "
                                        "redirect location or encryption attributes.")
        info = await run(self.store.copy_object, src_bucket, src_key, bucket, key, self.region,
                         metadata=metadata, content_type=content_type)
        root = xml_root("CopyObjectResult")
        add(root, "LastModified", iso_date(info.last_modified))
        add(root, "ETag", quote_etag(info.etag))
        return xml_response(root, self.request_id)

    # -- multipart --

    async def create_upload(self, bucket: str, key: str) -> Response:
        upload_id = await run(self.store.create_multipart_upload, bucket, key, self.region,
                              content_type=self.headers.get("content-type") or "binary/octet-stream",
                              metadata=user_metadata(self.headers))
        root = xml_root("InitiateMultipartUploadResult")
        add(root, "Bucket", bucket)
        add(root, "Key", key)
        add(root, "UploadId", upload_id)
        return xml_response(root, self.request_id)

    async def upload_part(self, bucket: str, key: str) -> Response:
        number = parse_part_number(self.query.get("partNumber"))
        upload_id = self.query.get("uploadId")
        if not upload_id:
            raise errors.InvalidArgument("uploadId is required with partNumber")
        size = self.object_size()
        md5 = self.content_md5()
        part = await run(self.store.upload_part, bucket, key, upload_id, number, self.upload_stream(size),
                         content_md5=md5, size=size)
        return Response(b"", 200, {"etag": quote_etag(part.etag)})

    async def upload_part_copy(self, bucket: str, key: str) -> Response:
        number = parse_part_number(self.query.get("partNumber"))
        upload_id = self.query.get("uploadId")
        if not upload_id:
            raise errors.InvalidArgument("uploadId is required with partNumber")
        src_bucket, src_key = parse_copy_source(self.headers["x-amz-copy-source"])
        source = await run(self.store.head_object, src_bucket, src_key, self.region)
        start, end = 0, source.size - 1
        copy_range = self.headers.get("x-amz-copy-source-range")
        if copy_range:
            span = parse_range(copy_range, source.size)
            if span is None:
                raise errors.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last")
            start, end = span

        def copy_part():
            if source.size == 0:
                return self.store.upload_part(bucket, key, upload_id, number, b"", content_md5=None, size=0)
            _, chunks = self.store.get_object(src_bucket, src_key, self.region, start=start, end=end)
            try:
                return self.store.upload_part(bucket, key, upload_id, number, chunks, content_md5=None,
                                              size=end - start + 1)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()

        part = await to_thread.run_sync(copy_part)
        root = xml_root("CopyPartResult")
        add(root, "LastModified", iso_date(part.last_modified))
        add(root, "ETag", quote_etag(part.etag))
        return xml_response(root, self.request_id)

    async def complete_upload(self, bucket: str, key: str, upload_id: str) -> Response:
        document = await self.xml_body("CompleteMultipartUpload")
        parts = []
        for entry in children(document, "Part"):
            number_text, etag = child_text(entry, "PartNumber"), child_text(entry, "ETag")
            if number_text is None or etag is None:
                raise errors.MalformedXML("every <Part> needs a <PartNumber> and an <ETag>")
            try:
                number = int(number_text.strip())
            except ValueError:
                raise errors.MalformedXML("PartNumber must be an integer") from None
            if not 1 <= number <= MAX_PART_NUMBER:
                raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
            parts.append((number, etag.strip().strip('"')))
        if not parts:
            raise errors.MalformedXML("The XML you provided was not well-formed or did not validate against our "
                                      "published schema: no parts.")
        if any(b[0] <= a[0] for a, b in zip(parts, parts[1:])):
            raise errors.InvalidPartOrder("The list of parts was not in ascending order. Parts must be ordered "
                                          "by part number.")
        info = await run(self.store.complete_multipart_upload, bucket, key, upload_id, parts)
        root = xml_root("CompleteMultipartUploadResult")
        host = self.headers.get("host", "localhost")
        add(root, "Location", f"http://{host}/{bucket}/{quote(key)}")
        add(root, "Bucket", bucket)
        add(root, "Key", key)
        add(root, "ETag", quote_etag(info.etag))
        return xml_response(root, self.request_id)

    async def list_parts(self, bucket: str, key: str) -> Response:
        upload_id = self.query["uploadId"]
        max_parts = parse_int(self.query.get("max-parts"), "max-parts", 1000, high=1000)
        marker = parse_int(self.query.get("part-number-marker"), "part-number-marker", 0)
        parts = await run(self.store.list_parts, bucket, key, upload_id)
        remaining = [p for p in sorted(parts, key=lambda p: p.number) if p.number > marker]
        page, truncated = remaining[:max_parts], len(remaining) > max_parts
        root = xml_root("ListPartsResult")
        add(root, "Bucket", bucket)
        add(root, "Key", key)
        add(root, "UploadId", upload_id)
        self.owner(root, "Initiator")
        self.owner(root)
        add(root, "StorageClass", "STANDARD")
        add(root, "PartNumberMarker", marker)
        add(root, "NextPartNumberMarker", page[-1].number if page else marker)
        add(root, "MaxParts", max_parts)
        add(root, "IsTruncated", truncated)
        for part in page:
            entry = add(root, "Part")
            add(entry, "PartNumber", part.number)
            add(entry, "LastModified", iso_date(part.last_modified))
            add(entry, "ETag", quote_etag(part.etag))
            add(entry, "Size", part.size)
        return xml_response(root, self.request_id)


def _capped(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """Pass chunks on until more than ``limit`` bytes went by (a body of unannounced size)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed object size.")
        yield chunk
