"""Browser POST uploads (``POST /bucket`` with a ``multipart/form-data`` form and a signed policy).

The form's fields come first and the file last (as S3 requires); the fields are read (at most
``MAX_FIELDS_BYTES``), the policy's signature, expiry and conditions are checked, and only then is the file
streamed into the store, its closing boundary cut off. ``content-length-range`` is enforced while
streaming: a file outside it is never committed."""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import time
from collections.abc import Iterator
from urllib.parse import quote

from starlette.responses import Response

from .. import errors
from ..access import WRITE
from ..sigv4 import ALGORITHM
from .call import Call, run
from .request import STORED_HEADERS, check_key
from .s3xml import add, quote_etag, xml_response, xml_root

MAX_FIELDS_BYTES = 64 * 1024
# fields a policy need not mention (S3's list; also fields named x-ignore-*)
UNCOVERED = {"x-amz-signature", "file", "policy", "${filename}"}
DENIED = "Invalid according to Policy: "


def _boundary(content_type: str) -> bytes:
    for piece in content_type.split(";")[1:]:
        name, _, value = piece.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    raise errors.MalformedPOSTRequest("The body of your POST request is not well-formed multipart/form-data.")


def _part_headers(block: bytes) -> tuple[str, str | None]:
    """(field name, file name or None) from a part's header lines."""
    for line in block.split(b"\r\n"):
        name, _, value = line.decode("utf-8", "replace").partition(":")
        if name.strip().lower() == "content-disposition":
            params = {}
            for item in value.split(";")[1:]:
                k, _, v = item.strip().partition("=")
                params[k.lower()] = v.strip('"')
            if "name" in params:
                return params["name"], params.get("filename") if params["name"].lower() == "file" else None
    raise errors.MalformedPOSTRequest("a form part has no Content-Disposition name")


async def _read_fields(call: Call, boundary: bytes) -> tuple[dict[str, str], bytes]:
    """The form's fields (names lowercased) and the bytes of the file read so far."""
    delimiter = b"--" + boundary
    buffer = b""
    while True:
        start = buffer.find(delimiter)
        if start >= 0:
            fields, position = {}, start
            while True:
                position += len(delimiter)
                if buffer[position:position + 2] == b"--":
                    raise errors.InvalidArgument("POST requires exactly one file upload per request.")
                head_end = buffer.find(b"\r\n\r\n", position)
                if head_end < 0:
                    break
                name, filename = _part_headers(buffer[position + 2:head_end])
                if name.lower() == "file":
                    fields["${filename}"] = filename or ""
                    return fields, buffer[head_end + 4:]
                value_end = buffer.find(b"\r\n" + delimiter, head_end + 4)
                if value_end < 0:
                    break
                fields[name.lower()] = buffer[head_end + 4:value_end].decode("utf-8", "replace")
                position = value_end + 2
        if len(buffer) > MAX_FIELDS_BYTES:
            raise errors.MalformedPOSTRequest("the form's fields before the file are too large")
        pieces = await call.body.next_block()
        if not pieces:
            raise errors.MalformedPOSTRequest("the form ended before its file field")
        buffer += b"".join(pieces)


def _file_bytes(first: bytes, rest: Iterator[bytes], boundary: bytes, low: int, high: int) -> Iterator[bytes]:
    """The file's content: everything up to the closing ``\\r\\n--boundary``, held back a little at a time."""
    closing = b"\r\n--" + boundary
    pending, total = first, 0
    chunks = iter(rest)
    while True:
        cut = pending.find(closing)
        if cut >= 0:
            total += cut
            if total > high:
                raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed size")
            if total < low:
                raise errors.EntityTooSmall("Your proposed upload is smaller than the minimum allowed size")
            yield pending[:cut]
            return
        keep = len(closing) - 1
        if len(pending) > keep:
            out, pending = pending[:-keep], pending[-keep:]
            total += len(out)
            if total > high:
                raise errors.EntityTooLarge("Your proposed upload exceeds the maximum allowed size")
            yield out
        chunk = next(chunks, None)
        if chunk is None:
            raise errors.IncompleteBody("the form ended before the file's closing boundary")
        pending += chunk


def _check_policy(policy: dict, fields: dict[str, str], bucket: str, now: float) -> tuple[int, int]:
    """Expiry and every condition; returns the content-length-range (low, high)."""
    try:
        expires = calendar.timegm(time.strptime(policy["expiration"][:19], "%Y-%m-%dT%H:%M:%S"))
    except (KeyError, TypeError, ValueError):
        raise errors.InvalidPolicyDocument("Invalid Policy: Invalid 'expiration' value") from None
    if now > expires:
        raise errors.AccessDenied(DENIED + "Policy expired.")
    conditions = policy.get("conditions")
    if not isinstance(conditions, list):
        raise errors.InvalidPolicyDocument("Invalid Policy: the policy needs a list of conditions")
    values = dict(fields, bucket=bucket)
    covered, low, high = set(), 0, float("inf")
    for condition in conditions:
        if isinstance(condition, dict) and len(condition) == 1:
            (name, wanted), = condition.items()
            condition = ["eq", "$" + name, wanted]
        if not isinstance(condition, list) or len(condition) != 3:
            raise errors.InvalidPolicyDocument(f"Invalid Policy: bad condition {condition!r}")
        op, name, wanted = condition
        if op == "content-length-range":
            try:
                low, high = int(name), int(wanted)
            except (TypeError, ValueError):
                raise errors.InvalidPolicyDocument("Invalid Policy: bad content-length-range") from None
            continue
        if not isinstance(name, str) or not name.startswith("$") or not isinstance(wanted, str):
            raise errors.InvalidPolicyDocument(f"Invalid Policy: bad condition {condition!r}")
        field = name[1:].lower()
        covered.add(field)
        value = values.get(field, "")
        ok = value == wanted if op == "eq" else value.startswith(wanted) if op == "starts-with" else None
        if ok is None:
            raise errors.InvalidPolicyDocument(f"Invalid Policy: unknown operation {op!r}")
        if not ok:
            raise errors.AccessDenied(DENIED + f"Policy Condition failed: [\"{op}\", \"{name}\", \"{wanted}\"]")
    for field in fields:
        if field not in covered and field not in UNCOVERED and not field.startswith("x-ignore-"):
            raise errors.AccessDenied(DENIED + f"Extra input fields: {field}")
    return low, high


async def post_object(call: Call, bucket: str, key: str) -> Response:
    if call.content_length() is None:
        raise errors.MissingContentLength("You must provide the Content-Length HTTP header.")
    boundary = _boundary(call.headers.get("content-type", ""))
    fields, first = await _read_fields(call, boundary)
    for required in ("key", "policy", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature"):
        if required not in fields:
            raise errors.InvalidArgument(f"Bucket POST must contain a field named '{required}'.")
    if fields["x-amz-algorithm"] != ALGORITHM:
        raise errors.InvalidArgument(f"x-amz-algorithm must be {ALGORITHM}")
    call.signed = call.gateway.verifier.verify_policy(fields["x-amz-credential"], fields["x-amz-date"],
                                                      fields["policy"], fields["x-amz-signature"])
    call.region = call.gateway.client_region(call.signed)
    await call.bucket(bucket, WRITE)
    try:
        policy = json.loads(base64.b64decode(fields["policy"], validate=True))
    except (binascii.Error, ValueError):
        raise errors.InvalidPolicyDocument("Invalid Policy: the policy is not base64-encoded JSON") from None
    if not isinstance(policy, dict):
        raise errors.InvalidPolicyDocument("Invalid Policy: the policy is not a JSON object")
    low, high = _check_policy(policy, fields, bucket, call.store.clock())
    object_key = fields["key"].replace("${filename}", fields.pop("${filename}", ""))
    if not object_key:
        raise errors.InvalidArgument("User key must have a length greater than 0.")
    check_key(object_key)
    high = min(high, call.config.max_object_size)
    body = _file_bytes(first, call.body.sync_chunks(), boundary, low, high)
    info = await run(call.store.put_object, bucket, object_key, body, call.region,
                     content_type=fields.get("content-type") or "binary/octet-stream",
                     metadata={k[len("x-amz-meta-"):]: v for k, v in fields.items() if k.startswith("x-amz-meta-")},
                     headers={k: v for k, v in fields.items() if k in STORED_HEADERS})
    call.body.done = True
    location = f"http://{call.headers.get('host', 'localhost')}/{bucket}/{quote(object_key)}"
    headers = {"etag": quote_etag(info.etag), "location": location}
    redirect = fields.get("success_action_redirect") or fields.get("redirect")
    if redirect:
        sep = "&" if "?" in redirect else "?"
        headers["location"] = (f"{redirect}{sep}bucket={quote(bucket)}&key={quote(object_key)}"
                               f"&etag={quote(quote_etag(info.etag))}")
        return Response(b"", 303, headers)
    status = fields.get("success_action_status", "204")
    if status == "201":
        root = xml_root("PostResponse")
        add(root, "Location", location)
        add(root, "Bucket", bucket)
        add(root, "Key", object_key)
        add(root, "ETag", quote_etag(info.etag))
        response = xml_response(root, call.request_id, 201)
        response.headers.update(headers)
        return response
    return Response(b"", 200 if status == "200" else 204, headers)
