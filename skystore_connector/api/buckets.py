"""Bucket handlers: create, delete, head, location, versioning, and ListBuckets (the buckets a key owns)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from starlette.responses import Response

from .. import errors
from ..access import OWNER, READ
from .call import Call, run
from .request import decode_token, encode_token, parse_int
from .s3xml import S3_NS, add, child_text, iso_date, parse_xml, xml_response, xml_root

MAX_BUCKETS = 10000


async def list_buckets(call: Call, bucket: str, key: str) -> Response:
    q = call.query
    limit = parse_int(q.get("max-buckets"), "max-buckets", MAX_BUCKETS, low=1, high=MAX_BUCKETS)
    prefix = q.get("prefix", "")
    after = decode_token(q["continuation-token"]) if q.get("continuation-token") else ""
    everything = await run(call.store.list_buckets)
    mine = [b for b in everything if call.store.owner_of(b) == call.access_key and b.name.startswith(prefix)
            and b.name > after]
    page = mine[:limit]
    root = xml_root("ListAllMyBucketsResult")
    call.owner(root)
    listing = add(root, "Buckets")
    for info in page:
        entry = add(listing, "Bucket")
        add(entry, "Name", info.name)
        add(entry, "CreationDate", iso_date(info.created))
        add(entry, "BucketRegion", info.region)
    if len(mine) > limit:
        add(root, "ContinuationToken", encode_token(page[-1].name))
    if prefix:
        add(root, "Prefix", prefix)
    return xml_response(root, call.request_id)


async def create_bucket(call: Call, bucket: str, key: str) -> Response:
    region = call.region
    data = await call.small_body()
    if data.strip():
        constraint = child_text(parse_xml(data, "CreateBucketConfiguration"), "LocationConstraint")
        # a configured region named explicitly wins; other names (AWS's) are hints
        region = (constraint and call.config.find_region(constraint)) or region
    await run(call.store.create_bucket, bucket, region, call.access_key)
    return Response(b"", 200, {"location": "/" + bucket})


async def delete_bucket(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, OWNER)
    await run(call.store.delete_bucket, bucket)
    return Response(b"", 204)


async def head_bucket(call: Call, bucket: str, key: str) -> Response:
    info = await call.bucket(bucket, READ)
    return Response(b"", 200, {"x-amz-bucket-region": info.region})


async def get_location(call: Call, bucket: str, key: str) -> Response:
    info = await call.bucket(bucket, READ)
    root = ET.Element("LocationConstraint", xmlns=S3_NS)
    root.text = info.region
    return xml_response(root, call.request_id)


async def get_versioning(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, READ)
    return xml_response(xml_root("VersioningConfiguration"), call.request_id)


async def put_versioning(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, OWNER)
    raise errors.NotImplementedOp("versioning cannot be enabled on SkyStore buckets (they are unversioned)")
