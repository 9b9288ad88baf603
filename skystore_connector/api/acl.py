"""ACLs as S3 answers them for a bucket whose ACLs are disabled (Object Ownership "bucket owner
enforced"): GetBucketAcl / GetObjectAcl show the owner's FULL_CONTROL; PutAcl accepts only that (the
canned ``private`` ACL, or a document granting the owner alone) and refuses any other grant with
AccessControlListNotSupported. Access for other keys is given by the config's ``grants``."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from starlette.responses import Response

from .. import errors
from ..access import OWNER, READ
from .call import Call, run
from .s3xml import add, children, local_name, parse_xml, xml_response, xml_root

XSI = "http://www.w3.org/2001/XMLSchema-instance"
REFUSED = ("This gateway does not support ACL grants (its buckets behave as S3's 'bucket owner enforced'); "
           "give other access keys access with [grants] in the gateway's config")


def _policy(call: Call, owner: str) -> Response:
    root = xml_root("AccessControlPolicy")
    call.owner(root, key=owner)
    grant = add(add(root, "AccessControlList"), "Grant")
    grantee = ET.SubElement(grant, "Grantee", {"xmlns:xsi": XSI, "xsi:type": "CanonicalUser"})
    add(grantee, "ID", owner)
    add(grantee, "DisplayName", owner)
    add(grant, "Permission", "FULL_CONTROL")
    return xml_response(root, call.request_id)


async def get_bucket_acl(call: Call, bucket: str, key: str) -> Response:
    info = await call.bucket(bucket, READ)
    return _policy(call, call.store.owner_of(info))


async def get_object_acl(call: Call, bucket: str, key: str) -> Response:
    info = await call.bucket(bucket, READ)
    await run(call.store.head_object, bucket, key, call.region)
    return _policy(call, call.store.owner_of(info))


async def put_acl(call: Call, bucket: str, key: str) -> Response:
    info = await call.bucket(bucket, OWNER)
    if key:
        await run(call.store.head_object, bucket, key, call.region)
    owner = call.store.owner_of(info)
    canned = call.headers.get("x-amz-acl")
    if any(name.startswith("x-amz-grant-") for name in call.headers.keys()):
        raise errors.AccessControlListNotSupported(REFUSED)
    data = await call.small_body()
    if canned is not None:
        if canned.strip() != "private" or data.strip():
            raise errors.AccessControlListNotSupported(REFUSED)
        return Response(b"", 200)
    if not data.strip():
        raise errors.MalformedXML("PutAcl needs an x-amz-acl header or an <AccessControlPolicy> document")
    document = parse_xml(data, "AccessControlPolicy")
    grants = [g for acl in children(document, "AccessControlList") for g in children(acl, "Grant")]
    for grant in grants:
        grantee = next((c for c in grant if local_name(c) == "Grantee"), None)
        ids = [c.text for c in (grantee if grantee is not None else []) if local_name(c) == "ID"]
        permission = next((c.text for c in grant if local_name(c) == "Permission"), None)
        if ids != [owner] or permission != "FULL_CONTROL":
            raise errors.AccessControlListNotSupported(REFUSED)
    return Response(b"", 200)
