"""Listing handlers: ListObjects (v1 and v2) and ListObjectVersions (an unversioned bucket's answer:
each key's one version, ``null``)."""

from __future__ import annotations

from urllib.parse import quote

from starlette.responses import Response

from .. import errors
from ..access import READ
from ..store import ListResult
from .call import Call, run
from .request import decode_token, encode_token, parse_int
from .s3xml import add, iso_date, quote_etag, xml_response, xml_root

MAX_KEYS = 1000


def _encoder(query: dict[str, str]):
    encode = query.get("encoding-type")
    if encode not in (None, "", "url"):
        raise errors.InvalidArgument("Invalid Encoding Method specified in Request")

    def text(value: str) -> str:
        return quote(value, safe="/") if encode == "url" else value

    return encode, text


async def _list(call: Call, bucket: str, prefix: str, delimiter: str, marker: str, max_keys: int) -> ListResult:
    await call.bucket(bucket, READ)
    if max_keys == 0:  # S3: nothing asked for, so nothing is left out (IsTruncated false)
        return ListResult([], [], False, None)
    return await run(call.store.list_objects, bucket, prefix=prefix, delimiter=delimiter or None,
                     marker=marker or None, max_keys=max_keys)


async def list_objects(call: Call, bucket: str, key: str) -> Response:
    q = call.query
    v2 = q.get("list-type") == "2"
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    max_keys = parse_int(q.get("max-keys"), "max-keys", MAX_KEYS, high=MAX_KEYS)
    encode, text = _encoder(q)
    if v2:
        token = q.get("continuation-token")
        marker = decode_token(token) if token else q.get("start-after", "")
    else:
        marker = q.get("marker", "")
    result = await _list(call, bucket, prefix, delimiter, marker, max_keys)

    root = xml_root("ListBucketResult")
    add(root, "Name", bucket)
    # v2 encodes <Prefix>; v1 does not (S3's documented elements, which is what SDKs decode)
    add(root, "Prefix", text(prefix) if v2 else prefix)
    if v2:
        if "continuation-token" in q:  # echoed as sent, even empty
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
    owner = call.store.owner_of(await run(call.store.head_bucket, bucket))
    for info in result.objects:
        entry = add(root, "Contents")
        add(entry, "Key", text(info.key))
        add(entry, "LastModified", iso_date(info.last_modified))
        add(entry, "ETag", quote_etag(info.etag))
        add(entry, "Size", info.size)
        add(entry, "StorageClass", "STANDARD")
        if not v2 or q.get("fetch-owner") == "true":
            call.owner(entry, key=owner)
    for common in result.common_prefixes:
        add(add(root, "CommonPrefixes"), "Prefix", text(common))
    return xml_response(root, call.request_id)


async def list_object_versions(call: Call, bucket: str, key: str) -> Response:
    """Every key has one version, ``null``, the latest; there are no delete markers."""
    q = call.query
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    max_keys = parse_int(q.get("max-keys"), "max-keys", MAX_KEYS, high=MAX_KEYS)
    encode, text = _encoder(q)
    key_marker = q.get("key-marker", "")
    result = await _list(call, bucket, prefix, delimiter, key_marker, max_keys)
    owner = call.store.owner_of(await run(call.store.head_bucket, bucket))
    root = xml_root("ListVersionsResult")
    add(root, "Name", bucket)
    add(root, "Prefix", text(prefix))
    add(root, "KeyMarker", text(key_marker))
    add(root, "VersionIdMarker", q.get("version-id-marker", ""))
    if result.is_truncated and result.next_marker:
        add(root, "NextKeyMarker", text(result.next_marker))
        add(root, "NextVersionIdMarker", "null")
    add(root, "MaxKeys", max_keys)
    if delimiter:
        add(root, "Delimiter", text(delimiter))
    if encode:
        add(root, "EncodingType", encode)
    add(root, "IsTruncated", bool(result.is_truncated))
    for info in result.objects:
        entry = add(root, "Version")
        add(entry, "Key", text(info.key))
        add(entry, "VersionId", "null")
        add(entry, "IsLatest", True)
        add(entry, "LastModified", iso_date(info.last_modified))
        add(entry, "ETag", quote_etag(info.etag))
        add(entry, "Size", info.size)
        add(entry, "StorageClass", "STANDARD")
        call.owner(entry, key=owner)
    for common in result.common_prefixes:
        add(add(root, "CommonPrefixes"), "Prefix", text(common))
    return xml_response(root, call.request_id)
