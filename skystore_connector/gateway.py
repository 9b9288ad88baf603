"""The S3 HTTP API (path-style ``/bucket/key``) over a ``SkyStore``, as an ASGI app (Starlette).

``make_app(store, region=None)`` returns the app of one listener; ``region`` fixes the region of its clients
(otherwise: the SigV4 credential scope's region when it names a configured one, else the default region).
Region names from clients (the SigV4 scope, CreateBucket's LocationConstraint) may use either spelling,
``aws-us-east-1`` or ``aws:us-east-1`` (``region_names``).

Every request is authenticated with SigV4 (``sigv4.py``) before anything else happens, except a CORS
preflight (``OPTIONS``, answered from the bucket's CORS rules) and a browser POST upload (signed by its
policy field, checked by its handler). Then the route table (``api/routes.py``) picks the handler; handlers
check the caller's access to the bucket (``access.py``). The pieces, one job each, are in ``api/``:

    routes.py      the route table              call.py      one request: identity, region, body, access
    buckets.py     bucket handlers              objects.py   object handlers (PUT/GET/HEAD/copy/delete)
    multipart.py   multipart upload handlers    listing.py   ListObjects v1/v2, ListObjectVersions
    acl.py         Get/PutAcl                   cors.py      CORS configuration, preflight, headers
    post_upload.py browser POST uploads         request.py   parsing headers, ranges, conditions
    s3xml.py       XML responses and defusedxml request parsing
    bodies.py      streaming request and response bodies

Store calls block (SQLite and files), so they run in worker threads. Errors become S3 XML errors
(``errors.py``); HEAD errors have no body; anything unexpected is a logged 500.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import errors
from .api import cors, post_upload, routes
from .api.bodies import DRAIN_LIMIT, RequestBody
from .api.call import Call, run
from .api.request import NotModified, check_key, split_path
from .api.s3xml import error_response, quote_etag
from .errors import S3Error
from .sigv4 import SignedRequest, SigV4Verifier, parse_query

log = logging.getLogger(__name__)

METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"]


def make_app(store, *, region: str | None = None, verifier: SigV4Verifier | None = None) -> Starlette:
    """The S3 API over ``store`` for one listener; ``region`` fixes its clients' region."""
    gateway = S3Gateway(store, region=region, verifier=verifier)
    app = Starlette(routes=[Route("/{path:path}", gateway.handle, methods=METHODS)])
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
        body = RequestBody(request.receive, asyncio.get_running_loop())
        if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
            body.done = True  # nothing to read (and nothing to drain before an error)
        call = Call(self, request, request_id, raw_path, body)
        try:
            response = await self.dispatch(call)
        except S3Error as e:
            log.debug("%s %s -> %s %s", request.method, resource, e.status, e.code)
            await self._settle_body(request, body)
            response = error_response(e, request_id, resource, head=head)
        except NotModified as e:
            response = Response(b"", 304, {"etag": quote_etag(e.etag)})
        except Exception:  # a bug or an unexpected failure: S3's 500, logged with its traceback
            log.exception("%s %s failed", request.method, resource)
            response = error_response(errors.InternalError("We encountered an internal error. Please try again."),
                                      request_id, resource, head=head)
        await self._add_cors(call, response)
        if not body.done:  # unread body bytes would be taken for the next request: end the connection
            response.headers["connection"] = "close"
        response.headers.setdefault("x-amz-request-id", request_id)
        return response

    async def dispatch(self, call: Call) -> Response:
        for name, value in parse_query(call.raw_query):
            call.query.setdefault(name, value)
        bucket, key = split_path(call.raw_path)
        resource = "object" if key else "bucket" if bucket else "service"
        if call.method == "OPTIONS":
            if not bucket:
                raise errors.MethodNotAllowed("The specified method is not allowed against this resource.")
            return await cors.preflight(self.store, bucket, call.headers)
        if routes.is_browser_post(call.method, resource, call.query, call.headers):
            return await post_upload.post_object(call, bucket, key)
        call.signed = self.verifier.verify(call.method, call.raw_path.decode("latin-1"), call.raw_query,
                                           call.headers.items())
        call.region = self.client_region(call.signed)
        unsupported = routes.UNSUPPORTED & call.query.keys()
        if unsupported and bucket:
            raise errors.NotImplementedOp(f"the ?{sorted(unsupported)[0]} sub-resource is not implemented")
        if key:
            check_key(key)
        handler = routes.find(resource, call.method, call.query, call.headers)
        if handler is None:
            if resource == "service" or call.method not in ("PUT", "POST", "DELETE"):
                raise errors.MethodNotAllowed("The specified method is not allowed against this resource.")
            raise errors.NotImplementedOp(f"this {call.method} on a {resource} is not implemented")
        return await handler(call, bucket, key)

    @staticmethod
    async def _add_cors(call: Call, response: Response) -> None:
        """A browser request (with Origin) to a bucket whose CORS rules allow it gets Access-Control-*."""
        origin = call.headers.get("origin")
        if not origin or call.method == "OPTIONS":
            return
        try:
            bucket, _ = split_path(call.raw_path)
            info = await run(call.store.meta.bucket, bucket) if bucket else None
        except Exception:  # noqa: BLE001 - CORS headers are a courtesy on top of the real answer
            return
        rule = cors.match(info.cors if info else None, origin, call.method, [])
        if rule is not None:
            response.headers.update(cors.allow_headers(rule, origin, call.method, []))

    @staticmethod
    async def _settle_body(request: Request, body: RequestBody) -> None:
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
