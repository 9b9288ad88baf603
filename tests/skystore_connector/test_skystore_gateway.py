"""boto3 (and hand-signed httpx requests) against the real gateway on loopback."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from skystore_connector.sigv4 import chunk_string_to_sign, sign, signing_key
from skystore_connector.testing import local_gateway

EAST, WEST = "aws-us-east-1", "aws-eu-west-1"
MAX_OBJECT = 20 * 1024 * 1024
MIN_PART = 1024


@pytest.fixture(scope="module")
def gw():
    with local_gateway([EAST, WEST], max_object_size=MAX_OBJECT, min_part_size=MIN_PART) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def s3(gw):
    return gw.client(EAST)


_bucket_counter = iter(range(10**6))


@pytest.fixture
def bucket(s3):
    name = f"bucket-{next(_bucket_counter)}"
    s3.create_bucket(Bucket=name)
    return name


def code_of(info) -> str:
    return info.value.response["Error"]["Code"]


def status_of(info) -> int:
    return info.value.response["ResponseMetadata"]["HTTPStatusCode"]


def raw(gw, method, path, *, body=b"", headers=None, query="", region=EAST, secret=None, payload=None,
        endpoint=None):
    """A request signed by botocore's signer but sent as is (httpx): for what boto3 refuses to send. It goes to
    ``region``'s listener unless ``endpoint`` names another (the main one places clients by the signed region)."""
    url = (endpoint or gw.endpoint(region)) + path + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    credentials = Credentials(gw.access_key, secret or gw.secret_key)
    if payload is not None:
        request.headers["X-Amz-Content-SHA256"] = payload
        SigV4Auth(credentials, "s3", region).add_auth(request)
    else:
        S3SigV4Auth(credentials, "s3", region).add_auth(request)
    prepared = request.prepare()
    return httpx.request(method, prepared.url, headers=dict(prepared.headers), content=body, timeout=30)


def error_code(response) -> str:
    return ET.fromstring(response.content).findtext("Code")


# --- buckets -----------------------------------------------------------------------------------------------


def test_buckets(gw, s3):
    s3.create_bucket(Bucket="life-cycle")
    assert "life-cycle" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.head_bucket(Bucket="life-cycle")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket="life-cycle")["LocationConstraint"] == EAST
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket="life-cycle")
    assert code_of(info) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
    s3.put_object(Bucket="life-cycle", Key="k", Body=b"x")
    with pytest.raises(ClientError) as info:
        s3.delete_bucket(Bucket="life-cycle")
    assert code_of(info) == "BucketNotEmpty" and status_of(info) == 409
    s3.delete_object(Bucket="life-cycle", Key="k")
    s3.delete_bucket(Bucket="life-cycle")
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket="life-cycle")
    assert status_of(info) == 404
    for call in (lambda: s3.list_objects_v2(Bucket="life-cycle"), lambda: s3.get_object(Bucket="life-cycle", Key="k"),
                 lambda: s3.put_object(Bucket="life-cycle", Key="k", Body=b"x")):
        with pytest.raises(ClientError) as info:
            call()
        assert code_of(info) == "NoSuchBucket"
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket="Bad_Name")
    assert code_of(info) == "InvalidBucketName"


def test_bucket_region_from_listener_and_location_constraint(gw):
    gw.client(WEST).create_bucket(Bucket="west-bucket")
    assert gw.client(EAST).get_bucket_location(Bucket="west-bucket")["LocationConstraint"] == WEST
    gw.client(EAST).create_bucket(Bucket="constrained", CreateBucketConfiguration={"LocationConstraint": WEST})
    assert gw.client(EAST).head_bucket(Bucket="constrained")["ResponseMetadata"]["HTTPHeaders"][
        "x-amz-bucket-region"] == WEST


WEST_COLON = "aws:eu-west-1"  # SkyStore's own spelling of WEST, as in the price files


def test_location_constraint_in_the_colon_spelling(gw):
    gw.client(EAST).create_bucket(Bucket="colon-constrained",
                                  CreateBucketConfiguration={"LocationConstraint": WEST_COLON})
    assert gw.client(EAST).get_bucket_location(Bucket="colon-constrained")["LocationConstraint"] == WEST


def test_sigv4_scope_in_the_colon_spelling_places_the_client(gw, s3, bucket):
    """What the Hadoop connector or curl send for fs.skystore.region=aws:eu-west-1 (boto3 allows no colon)."""
    response = raw(gw, "PUT", f"/{bucket}/colon-scope", body=b"from a colon region", region=WEST_COLON,
                   endpoint=gw.endpoint())
    assert response.status_code == 200, response.text
    assert gw.has_copy(WEST, bucket, "colon-scope") and not gw.has_copy(EAST, bucket, "colon-scope")
    assert s3.get_object(Bucket=bucket, Key="colon-scope")["Body"].read() == b"from a colon region"


def test_local_gateway_helpers_take_either_spelling(gw, bucket):
    west = gw.client(WEST_COLON)
    assert west.meta.region_name == WEST and gw.endpoint(WEST_COLON) == gw.endpoint(WEST)
    west.put_object(Bucket=bucket, Key="helpers", Body=b"x")
    assert gw.has_copy(WEST_COLON, bucket, "helpers") and gw.region_dir(WEST_COLON) == gw.region_dir(WEST)


def test_unknown_listener_region_lists_both_spellings(gw):
    from skystore_connector.gateway import make_app
    from skystore_connector.region_names import UnknownRegionError

    assert make_app(gw.store, region=WEST_COLON).state.gateway.region == WEST
    with pytest.raises(UnknownRegionError) as caught:
        make_app(gw.store, region="aws:mars-1")
    assert f"{EAST} (aws:us-east-1), {WEST} ({WEST_COLON})" in str(caught.value)


# --- objects -----------------------------------------------------------------------------------------------


def test_put_get_head_delete(s3, bucket):
    body = os.urandom(100_000)
    put = s3.put_object(Bucket=bucket, Key="dir/obj.bin", Body=body, ContentType="application/x-test",
                        Metadata={"owner": "me", "note": "two words"})
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "application/x-test" and got["ContentLength"] == len(body)
    assert got["Metadata"] == {"owner": "me", "note": "two words"}
    assert got["ETag"] == put["ETag"] and abs(got["LastModified"].timestamp() - time.time()) < 60
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    head = s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert head["ContentLength"] == len(body) and head["ETag"] == put["ETag"] and head["Metadata"]["owner"] == "me"
    s3.delete_object(Bucket=bucket, Key="dir/obj.bin")
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert code_of(info) == "NoSuchKey" and status_of(info) == 404
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert status_of(info) == 404
    s3.delete_object(Bucket=bucket, Key="never-there")  # S3: 204 for a missing key
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


def test_special_keys_round_trip(s3, bucket):
    keys = ["a b+c=d&e.txt", "ünï/cödé ✓", "percent%20literal", "tilde~and'quote\"", "x<y>&z", "deep/" * 20 + "f"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(listed) == sorted(keys, key=lambda k: k.encode())
    # asked for explicitly, encoding-type=url is left to the caller to decode
    encoded = [o["Key"] for o in s3.list_objects(Bucket=bucket, EncodingType="url")["Contents"]]
    assert all(" " not in k and "<" not in k for k in encoded) and [unquote(k) for k in encoded] == listed


def test_ranges(s3, bucket):
    body = bytes(range(256)) * 40  # 10240 bytes
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    for spec, expected, content_range in [("bytes=0-9", body[:10], "bytes 0-9/10240"),
                                          ("bytes=10000-", body[10000:], "bytes 10000-10239/10240"),
                                          ("bytes=-100", body[-100:], "bytes 10140-10239/10240"),
                                          ("bytes=10200-99999", body[10200:], "bytes 10200-10239/10240")]:
        got = s3.get_object(Bucket=bucket, Key="r", Range=spec)
        assert got["Body"].read() == expected
        assert got["ContentRange"] == content_range
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="r", Range="bytes=10240-")
    assert code_of(info) == "InvalidRange" and status_of(info) == 416
    head = s3.head_object(Bucket=bucket, Key="r", Range="bytes=5-9")
    assert head["ContentLength"] == 5


def test_conditional_get(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"cond")["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"cond"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert status_of(info) == 412
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert status_of(info) == 304


def test_content_md5(s3, bucket):
    body = b"checked body"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5", Body=body, ContentMD5=good)
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"tampered", ContentMD5=wrong)
    assert code_of(info) == "BadDigest" and status_of(info) == 400
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"x", ContentMD5="not-base64!")
    assert code_of(info) == "InvalidDigest"
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == body  # the failed writes changed nothing


def test_unsigned_payload_client(gw, bucket):
    client = gw.client(EAST, s3={"addressing_style": "path", "payload_signing_enabled": False})
    client.put_object(Bucket=bucket, Key="u", Body=b"unsigned payload")
    assert client.get_object(Bucket=bucket, Key="u")["Body"].read() == b"unsigned payload"


def test_delete_objects(s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"x")
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/0"}, {"Key": "d/1"}, {"Key": "ghost"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["d/0", "d/1", "ghost"]
    assert not result.get("Errors")
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/2"}, {"Key": "d/3"}], "Quiet": True})
    assert not quiet.get("Deleted") and not quiet.get("Errors")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["d/4"]


def test_listing_pagination_with_delimiters(s3, bucket):
    keys = sorted([f"logs/2024/{m:02d}/part-{i}" for m in range(1, 4) for i in range(4)]
                  + [f"top-{i}" for i in range(7)] + ["logs/readme", "other/x"])
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    v2 = s3.get_paginator("list_objects_v2")
    v1 = s3.get_paginator("list_objects")
    for paginator in (v1, v2):
        flat = [o["Key"] for page in paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": 4})
                for o in page.get("Contents", [])]
        assert flat == keys
        pages = list(paginator.paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 3}))
        assert len(pages) > 1
        top = [o["Key"] for p in pages for o in p.get("Contents", [])]
        prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
        assert top == [f"top-{i}" for i in range(7)] and prefixes == ["logs/", "other/"]
        nested = list(paginator.paginate(Bucket=bucket, Prefix="logs/", Delimiter="/",
                                         PaginationConfig={"PageSize": 2}))
        assert [c["Prefix"] for p in nested for c in p.get("CommonPrefixes", [])] == ["logs/2024/"]
        assert [o["Key"] for p in nested for o in p.get("Contents", [])] == ["logs/readme"]
    page = s3.list_objects_v2(Bucket=bucket, MaxKeys=5, StartAfter="other/x")
    assert [o["Key"] for o in page["Contents"]] == [f"top-{i}" for i in range(5)] and page["KeyCount"] == 5
    assert page["IsTruncated"] and page["NextContinuationToken"]
    rest = s3.list_objects_v2(Bucket=bucket, ContinuationToken=page["NextContinuationToken"], FetchOwner=True)
    assert [o["Key"] for o in rest["Contents"]] == ["top-5", "top-6"] and not rest["IsTruncated"]
    with pytest.raises(ClientError) as info:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!!not a token")
    assert code_of(info) == "InvalidArgument"


def test_copy_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src file+1", Body=b"copy me", ContentType="text/plain", Metadata={"a": "1"})
    source = {"Bucket": bucket, "Key": "src file+1"}
    result = s3.copy_object(Bucket=bucket, Key="dst/copied", CopySource=source)
    assert result["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"copy me").hexdigest()}"'
    copied = s3.get_object(Bucket=bucket, Key="dst/copied")
    assert copied["Body"].read() == b"copy me" and copied["Metadata"] == {"a": "1"}
    assert copied["ContentType"] == "text/plain"
    s3.copy_object(Bucket=bucket, Key="dst/replaced", CopySource=source, MetadataDirective="REPLACE",
                   Metadata={"b": "2"}, ContentType="application/json")
    replaced = s3.head_object(Bucket=bucket, Key="dst/replaced")
    assert replaced["Metadata"] == {"b": "2"} and replaced["ContentType"] == "application/json"
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="src file+1", CopySource=source)
    assert code_of(info) == "InvalidRequest"
    s3.copy_object(Bucket=bucket, Key="src file+1", CopySource=source, MetadataDirective="REPLACE",
                   Metadata={"c": "3"})
    assert s3.head_object(Bucket=bucket, Key="src file+1")["Metadata"] == {"c": "3"}
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert code_of(info) == "NoSuchKey"


# --- multipart ---------------------------------------------------------------------------------------------


def test_multipart_by_hand(s3, bucket):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="text/csv", Metadata={"m": "1"})
    upload_id = upload["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload_id]
    pieces = [os.urandom(2000), os.urandom(1500), b"tail"]
    etags = [s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=n + 1, Body=p)["ETag"]
             for n, p in enumerate(pieces)]
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == [
        (i + 1, len(p), e) for i, (p, e) in enumerate(zip(pieces, etags))]
    page = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id, MaxParts=2)
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": etags[1]}, {"PartNumber": 2, "ETag": etags[1]}]})
    assert code_of(info) == "InvalidPart"
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": 2, "ETag": etags[1]}, {"PartNumber": 1, "ETag": etags[0]}]})
    assert code_of(info) == "InvalidPartOrder"
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    assert done["ETag"].endswith('-3"')
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == b"".join(pieces) and got["ContentType"] == "text/csv"
    assert got["Metadata"] == {"m": "1"} and not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with pytest.raises(ClientError) as info:
        s3.upload_part(Bucket=bucket, Key="mp", UploadId="no-such-upload", PartNumber=1, Body=b"x")
    assert code_of(info) == "NoSuchUpload" and status_of(info) == 404


def test_multipart_errors_and_abort(gw, s3, bucket):
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="small", UploadId=upload_id, PartNumber=1, Body=b"tiny")["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="small", UploadId=upload_id, PartNumber=2, Body=b"end")["ETag"]
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=bucket, Key="small", UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert code_of(info) == "EntityTooSmall"
    for number in ("0", "10001", "x"):
        response = raw(gw, "PUT", f"/{bucket}/small", body=b"data", query=f"partNumber={number}&uploadId={upload_id}")
        assert response.status_code == 400 and error_code(response) == "InvalidArgument"
    for bad in (b"<CompleteMultipartUpload><Part>", b"<Other/>", b"",
                b"<CompleteMultipartUpload><Part><PartNumber>a</PartNumber><ETag>x</ETag></Part>"
                b"</CompleteMultipartUpload>"):
        response = raw(gw, "POST", f"/{bucket}/small", body=bad, query=f"uploadId={upload_id}")
        assert response.status_code == 400 and error_code(response) == "MalformedXML", bad
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=upload_id)
    with pytest.raises(ClientError) as info:
        s3.list_parts(Bucket=bucket, Key="small", UploadId=upload_id)
    assert code_of(info) == "NoSuchUpload"


def test_upload_file_multipart_and_part_copy(gw, s3, bucket, tmp_path):
    data = os.urandom(11 * 1024 * 1024 + 123)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    transfer = TransferConfig(multipart_threshold=1024 * 1024, multipart_chunksize=5 * 1024 * 1024,
                              max_concurrency=3)
    s3.upload_file(str(source), bucket, "big.bin", Config=transfer)
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')
    target = tmp_path / "back.bin"
    s3.download_file(bucket, "big.bin", str(target), Config=transfer)
    assert target.read_bytes() == data
    # UploadPartCopy: assemble a new object from byte ranges of the big one
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    parts = []
    for number, (start, end) in enumerate([(0, 5 * 1024 * 1024 - 1), (len(data) - 10, len(data) - 1)], 1):
        copied = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload_id, PartNumber=number,
                                     CopySource={"Bucket": bucket, "Key": "big.bin"},
                                     CopySourceRange=f"bytes={start}-{end}")
        parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="assembled", UploadId=upload_id,
                                 MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=bucket, Key="assembled")["Body"].read() == data[:5 * 1024 * 1024] + data[-10:]


# --- authentication ----------------------------------------------------------------------------------------


def test_bad_signatures_and_unsigned_requests(gw, bucket):
    wrong = boto3.client("s3", endpoint_url=gw.endpoint(EAST), aws_access_key_id=gw.access_key,
                         aws_secret_access_key="not-the-secret", region_name=EAST,
                         config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as info:
        wrong.list_objects_v2(Bucket=bucket)
    assert code_of(info) == "SignatureDoesNotMatch" and status_of(info) == 403
    unknown = boto3.client("s3", endpoint_url=gw.endpoint(EAST), aws_access_key_id="AKIDUNKNOWN",
                           aws_secret_access_key="x", region_name=EAST,
                           config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as info:
        unknown.list_buckets()
    assert code_of(info) == "InvalidAccessKeyId"
    response = httpx.get(f"{gw.endpoint(EAST)}/{bucket}/anything")
    assert response.status_code == 403
    error = ET.fromstring(response.content)
    assert error.tag == "Error" and error.findtext("Code") == "AccessDenied"
    assert error.findtext("Resource") == f"/{bucket}/anything" and error.findtext("RequestId")
    assert response.headers["x-amz-request-id"] == error.findtext("RequestId")
    assert httpx.head(f"{gw.endpoint(EAST)}/{bucket}/anything").status_code == 403
    assert httpx.put(f"{gw.endpoint(EAST)}/{bucket}/sneaky", content=b"x").status_code == 403
    tampered = raw(gw, "PUT", f"/{bucket}/k", body=b"body", headers={"x-amz-meta-a": "1"})
    assert tampered.status_code == 200
    request = AWSRequest(method="PUT", url=f"{gw.endpoint(EAST)}/{bucket}/k", data=b"body")
    S3SigV4Auth(Credentials(gw.access_key, gw.secret_key), "s3", EAST).add_auth(request)
    headers = dict(request.prepare().headers)
    bad = httpx.put(f"{gw.endpoint(EAST)}/{bucket}/other-key", headers=headers, content=b"body")
    assert bad.status_code == 403 and error_code(bad) == "SignatureDoesNotMatch"


def test_payload_hash_mismatch_stores_nothing(gw, bucket):
    declared = hashlib.sha256(b"what was signed").hexdigest()
    response = raw(gw, "PUT", f"/{bucket}/hash", body=b"what was sent!!", payload=declared)
    assert response.status_code == 400 and error_code(response) == "XAmzContentSHA256Mismatch"
    missing = raw(gw, "GET", f"/{bucket}/hash")
    assert missing.status_code == 404 and error_code(missing) == "NoSuchKey"


def test_presigned_get(gw, s3, bucket):
    s3.put_object(Bucket=bucket, Key="shared file.txt", Body=b"presigned!")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared file.txt"},
                                    ExpiresIn=300)
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"presigned!"
    forged = url.replace("shared%20file.txt", "other.txt")
    assert httpx.get(forged).status_code == 403


def test_bad_keys(gw, bucket):
    for path in (f"/{bucket}/a/%2E%2E/b", f"/{bucket}/%2E%2E", f"/{bucket}/nul%00byte"):
        response = raw(gw, "PUT", path, body=b"x")
        assert response.status_code == 400 and error_code(response) == "InvalidArgument", path
    long_key = "k" * 1025
    response = raw(gw, "PUT", f"/{bucket}/{long_key}", body=b"x")
    assert response.status_code == 400 and error_code(response) == "KeyTooLongError"
    assert raw(gw, "GET", f"/{bucket}", query="list-type=2").status_code == 200


def test_oversize_and_malformed_requests(gw, bucket):
    # Content-Length beyond max_object_size: refused before any body byte is read
    with socket.create_connection(("127.0.0.1", int(gw.endpoint(EAST).rsplit(":", 1)[1]))) as conn:
        request = AWSRequest(method="PUT", url=f"{gw.endpoint(EAST)}/{bucket}/huge",
                             headers={"Content-Length": str(MAX_OBJECT + 1),
                                      "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
        SigV4Auth(Credentials(gw.access_key, gw.secret_key), "s3", EAST).add_auth(request)
        head = "".join(f"{k}: {v}\r\n" for k, v in request.prepare().headers.items())
        host = gw.endpoint(EAST).removeprefix("http://")
        conn.sendall(f"PUT /{bucket}/huge HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode())
        conn.settimeout(10)
        reply = b""
        while piece := conn.recv(65536):  # the gateway closes the connection: the body was never read
            reply += piece
        reply = reply.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 400") and "<Code>EntityTooLarge</Code>" in reply
    for bad in (b"<Delete><Object><Key>a</Key></Object>", b"<Delete></Delete>", b"not xml"):
        response = raw(gw, "POST", f"/{bucket}", query="delete", body=bad,
                       headers={"Content-MD5": base64.b64encode(hashlib.md5(bad).digest()).decode()})
        assert response.status_code == 400 and error_code(response) == "MalformedXML", bad
    response = raw(gw, "GET", f"/{bucket}", query="list-type=2&max-keys=lots")
    assert response.status_code == 400 and error_code(response) == "InvalidArgument"
    response = raw(gw, "GET", f"/{bucket}", query="policy")
    assert response.status_code == 501 and error_code(response) == "NotImplemented"


def _chunked_body(data: bytes, chunk: int, checksum_of: bytes | None = None) -> bytes:
    framed = b"".join(f"{len(data[i:i + chunk]):x}\r\n".encode() + data[i:i + chunk] + b"\r\n"
                      for i in range(0, len(data), chunk))
    crc = base64.b64encode(zlib.crc32(data if checksum_of is None else checksum_of).to_bytes(4, "big")).decode()
    return framed + f"0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n".encode()


def test_aws_chunked_uploads(gw, s3, bucket):
    data = os.urandom(300_000)
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
               "x-amz-trailer": "x-amz-checksum-crc32"}
    body = _chunked_body(data, 65536)
    response = raw(gw, "PUT", f"/{bucket}/trailer", body=body, headers=headers,
                   payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert response.status_code == 200, response.text
    assert s3.get_object(Bucket=bucket, Key="trailer")["Body"].read() == data
    corrupt = _chunked_body(data[:-1] + bytes([data[-1] ^ 1]), 65536, checksum_of=data)
    response = raw(gw, "PUT", f"/{bucket}/trailer", body=corrupt, headers=headers,
                   payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert response.status_code == 400 and error_code(response) == "BadDigest"
    assert s3.get_object(Bucket=bucket, Key="trailer")["Body"].read() == data

    # STREAMING-AWS4-HMAC-SHA256-PAYLOAD: chunk signatures chained from the request's seed signature
    request = AWSRequest(method="PUT", url=f"{gw.endpoint(EAST)}/{bucket}/signed-chunks",
                         headers={"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
                                  "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"})
    SigV4Auth(Credentials(gw.access_key, gw.secret_key), "s3", EAST).add_auth(request)
    prepared = request.prepare()
    amz_date = prepared.headers["X-Amz-Date"]
    previous = prepared.headers["Authorization"].rsplit("Signature=", 1)[1]
    key = signing_key(gw.secret_key, amz_date[:8], EAST, "s3")
    scope = f"{amz_date[:8]}/{EAST}/s3/aws4_request"
    framed = b""
    for piece in [data[i:i + 100_000] for i in range(0, len(data), 100_000)] + [b""]:
        previous = sign(key, chunk_string_to_sign(amz_date, scope, previous, hashlib.sha256(piece).hexdigest()))
        framed += f"{len(piece):x};chunk-signature={previous}\r\n".encode() + piece + b"\r\n"
    headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
    response = httpx.put(prepared.url, headers=headers, content=framed)
    assert response.status_code == 200, response.text
    assert s3.get_object(Bucket=bucket, Key="signed-chunks")["Body"].read() == data


def test_streamed_body_without_content_length(gw, s3, bucket):
    """A client streaming with Transfer-Encoding: chunked and UNSIGNED-PAYLOAD (as Java clients may)."""
    pieces = [os.urandom(70_000) for _ in range(5)]
    request = AWSRequest(method="PUT", url=f"{gw.endpoint(EAST)}/{bucket}/streamed",
                         headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials(gw.access_key, gw.secret_key), "s3", EAST).add_auth(request)
    headers = {k: v for k, v in request.prepare().headers.items() if k.lower() != "content-length"}
    response = httpx.put(request.url, headers=headers, content=iter(pieces))
    assert response.status_code == 200, response.text
    assert s3.get_object(Bucket=bucket, Key="streamed")["Body"].read() == b"".join(pieces)


# --- regions -----------------------------------------------------------------------------------------------


def test_replicate_on_read_across_region_endpoints(gw, bucket):
    east, west = gw.client(EAST), gw.client(WEST)
    body = os.urandom(50_000)
    east.put_object(Bucket=bucket, Key="replicated", Body=body)
    assert gw.has_copy(EAST, bucket, "replicated") and not gw.has_copy(WEST, bucket, "replicated")
    west_files = {p for p in gw.region_dir(WEST).rglob("*") if p.is_file()}
    assert west.get_object(Bucket=bucket, Key="replicated")["Body"].read() == body
    assert gw.has_copy(WEST, bucket, "replicated")
    new_files = {p for p in gw.region_dir(WEST).rglob("*") if p.is_file()} - west_files
    assert [p.read_bytes() for p in new_files] == [body]
    # the main listener places a client by its SigV4 region: a west client's write has its base copy in west
    main_west = boto3.client("s3", endpoint_url=gw.endpoint(), aws_access_key_id=gw.access_key,
                             aws_secret_access_key=gw.secret_key, region_name=WEST,
                             config=BotoConfig(s3={"addressing_style": "path"}))
    main_west.put_object(Bucket=bucket, Key="written-in-west", Body=b"w")
    assert gw.has_copy(WEST, bucket, "written-in-west") and not gw.has_copy(EAST, bucket, "written-in-west")
    elsewhere = boto3.client("s3", endpoint_url=gw.endpoint(), aws_access_key_id=gw.access_key,
                             aws_secret_access_key=gw.secret_key, region_name="us-west-2",
                             config=BotoConfig(s3={"addressing_style": "path"}))
    elsewhere.put_object(Bucket=bucket, Key="written-anywhere", Body=b"d")  # not a configured region: default
    assert gw.has_copy(gw.config.default_region, bucket, "written-anywhere")


def test_concurrent_puts_to_one_key(gw, bucket):
    bodies = [bytes([i]) * (200_000 + i) for i in range(8)]
    clients = [gw.client(EAST if i % 2 else WEST) for i in range(len(bodies))]

    def put(i: int) -> str:
        return clients[i].put_object(Bucket=bucket, Key="contended", Body=bodies[i])["ETag"]

    with ThreadPoolExecutor(len(bodies)) as pool:
        etags = list(pool.map(put, range(len(bodies))))
    final = gw.client(EAST).get_object(Bucket=bucket, Key="contended")
    data = final["Body"].read()
    assert data in bodies and final["ETag"] == etags[bodies.index(data)]
    assert final["ContentLength"] == len(data)


# --- the CLI -----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(path: Path, port: int, host: str = "127.0.0.1") -> Path:
    config = path / "skystore.toml"
    config.write_text(f"""
host = "{host}"
port = {port}
state_dir = "state"

[access_keys]
AKIDCLITEST = "cli-secret-key"

[regions.aws-us-east-1]
cloud = "aws:us-east-1"
url = "regions/east"

[regions.aws-eu-west-1]
cloud = "aws:eu-west-1"
url = "regions/west"
port = 0
""")
    return config


def _cli(*args) -> list[str]:
    return [sys.executable, "-c", "import sys; from skystore_connector.cli import main; sys.exit(main())", *args]


def test_cli_serve_answers_boto3_and_stops(tmp_path):
    config = _write_config(tmp_path, _free_port())
    process = subprocess.Popen(_cli("serve", "--config", str(config)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ready"):
                break
        output = "".join(lines)
        assert "Ready" in output, output + process.stderr.read() if process.poll() is not None else output
        endpoints = [word for line in lines for word in line.split() if word.startswith("http://")]
        assert len(endpoints) == 2 and "AKIDCLITEST" in output and "cli-secret-key" not in output
        client = boto3.client("s3", endpoint_url=endpoints[0], aws_access_key_id="AKIDCLITEST",
                              aws_secret_access_key="cli-secret-key", region_name="aws-us-east-1",
                              config=BotoConfig(s3={"addressing_style": "path"}))
        client.create_bucket(Bucket="cli-bucket")
        client.put_object(Bucket="cli-bucket", Key="k", Body=b"from the cli")
        assert client.get_object(Bucket="cli-bucket", Key="k")["Body"].read() == b"from the cli"
        assert (tmp_path / "regions" / "east" / "cli-bucket").is_dir()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rc = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert rc == 0, process.stderr.read()


def _start_cli(config: Path) -> tuple[subprocess.Popen, str]:
    """``skystore serve`` as a subprocess, and its default region's endpoint once it is ready."""
    process = subprocess.Popen(_cli("serve", "--config", str(config)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line or line.startswith("Ready"):
            break
        endpoint = next((w for w in line.split() if w.startswith("http://")), None)
        if endpoint and "aws-us-east-1" in line:
            first = endpoint
    assert process.poll() is None, process.stderr.read()
    return process, first


def test_gateway_killed_mid_upload_and_restarted_loses_nothing(tmp_path):
    """A PUT cut off by SIGKILL of the gateway: after a restart the key still holds its last completed write,
    no partial object is visible, and the killed upload's bytes are collected by a later sweep."""
    from skystore_connector.config import Config
    from skystore_connector.store import SkyStore

    config = _write_config(tmp_path, _free_port())
    boto = dict(aws_access_key_id="AKIDCLITEST", aws_secret_access_key="cli-secret-key", region_name="aws-us-east-1",
                config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    process, endpoint = _start_cli(config)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **boto)
        client.create_bucket(Bucket="bkt")
        client.put_object(Bucket="bkt", Key="k", Body=b"last completed write")
        # a signed PUT announcing 4 MiB that sends 1 MiB and stops: the gateway is killed while it waits
        request = AWSRequest("PUT", f"{endpoint}/bkt/k", headers={"Content-Length": str(4 << 20),
                                                                "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
        SigV4Auth(Credentials("AKIDCLITEST", "cli-secret-key"), "s3", "aws-us-east-1").add_auth(request)
        host, port = endpoint.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            head = f"PUT /bkt/k HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host") + "\r\n"
            sock.sendall(head.encode() + b"x" * (1 << 20))
            time.sleep(1.0)  # the gateway is writing the partial body to a pending blob
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    east = tmp_path / "regions" / "east" / "bkt"
    assert len(list(east.iterdir())) == 2  # the completed object and the killed upload's leftover

    process, endpoint = _start_cli(config)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **boto)
        assert client.get_object(Bucket="bkt", Key="k")["Body"].read() == b"last completed write"
        assert [o["Key"] for o in client.list_objects_v2(Bucket="bkt")["Contents"]] == ["k"]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    later = time.time() + 2 * 3600  # past pending_grace (1 h): the killed upload is abandoned
    with SkyStore(Config.load(config), clock=lambda: later) as store:
        counts = store.sweep()
        assert counts["abandoned_writes"] == 1, counts
        assert store.get_object("bkt", "k", "aws-us-east-1")[0].size == len(b"last completed write")
    assert len(list(east.iterdir())) == 1


def test_cli_refuses_taken_port_and_remote_host(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        config = _write_config(tmp_path, taken.getsockname()[1])
        result = subprocess.run(_cli("serve", "--config", str(config)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot listen on 127.0.0.1" in result.stderr
    remote = _write_config(tmp_path, 0, host="0.0.0.0")
    result = subprocess.run(_cli("serve", "--config", str(remote)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--host 0.0.0.0" in result.stderr
