"""S3 conformance of answers clients act on (retried completion, part-copy ranges, GET ?partNumber,
listing edge cases, MaxBuckets, expired presigned URLs) and of the operations tools call
(ListObjectVersions, ACLs, CORS and preflight, browser POST uploads). boto3 and raw HTTP, real gateway."""

from __future__ import annotations

import time

import httpx
import pytest
from botocore.exceptions import ClientError

from skystore_connector.testing import local_gateway
from conftest import code, status  # noqa: E402

EAST = "aws-us-east-1"
OTHER = "SKYOTHERKEY2"
PART = 1024


@pytest.fixture(scope="module")
def gw():
    with local_gateway([EAST], access_keys={OTHER: "other-secret"}, min_part_size=PART) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def s3(gw):
    return gw.client()


_names = iter(range(10**6))


@pytest.fixture
def bucket(s3):
    name = f"a-{next(_names)}"
    s3.create_bucket(Bucket=name)
    return name


def multipart(s3, bucket, key, parts: list[bytes]) -> tuple[str, list[dict]]:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    listed = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                                       Body=data)["ETag"]}
              for n, data in enumerate(parts, 1)]
    return upload, listed


# ---- right answers -------------------------------------------------------------------------------------------

def test_retried_complete_answers_the_same_etag(s3, bucket):
    upload, parts = multipart(s3, bucket, "k", [b"a" * PART, b"b" * 10])
    first = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": parts})
    again = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": parts})
    assert again["ETag"] == first["ETag"] and again["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(ClientError) as info:  # an upload that never existed is still 404
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId="0" * 32, MultipartUpload={"Parts": parts})
    assert (status(info), code(info)) == (404, "NoSuchUpload")


def test_upload_part_copy_range_past_the_end_is_416(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"0123456789")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    for bad in ("bytes=5-10", "bytes=10-12", "bytes=0-100"):
        with pytest.raises(ClientError) as info:
            s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=bad)
        assert (status(info), code(info)) == (416, "InvalidRange"), bad
    with pytest.raises(ClientError) as info:
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange="bytes=5-")
    assert code(info) == "InvalidArgument"
    assert s3.list_parts(Bucket=bucket, Key="dst", UploadId=upload).get("Parts", []) == []
    s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                        CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange="bytes=2-9")
    assert s3.list_parts(Bucket=bucket, Key="dst", UploadId=upload)["Parts"][0]["Size"] == 8


def test_get_part_number(s3, bucket):
    parts = [b"a" * PART, b"b" * (PART + 5), b"c" * 7]
    upload, listed = multipart(s3, bucket, "mp", parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": listed})
    for number, data in enumerate(parts, 1):
        got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and got["PartsCount"] == 3
        assert got["Body"].read() == data and got["ContentLength"] == len(data)
        start = sum(map(len, parts[:number - 1]))
        assert got["ContentRange"] == f"bytes {start}-{start + len(data) - 1}/{sum(map(len, parts))}"
        head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert head["PartsCount"] == 3 and head["ContentLength"] == len(data)
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=4)
    assert (status(info), code(info)) == (416, "InvalidPartNumber")
    s3.put_object(Bucket=bucket, Key="simple", Body=b"whole")
    assert s3.get_object(Bucket=bucket, Key="simple", PartNumber=1)["Body"].read() == b"whole"


def test_max_keys_zero_is_not_truncated(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for listing in (s3.list_objects_v2(Bucket=bucket, MaxKeys=0), s3.list_objects(Bucket=bucket, MaxKeys=0)):
        assert listing["IsTruncated"] is False and "Contents" not in listing


def test_empty_continuation_token_is_echoed(gw, bucket):
    response = gw.raw("GET", f"/{bucket}", query="list-type=2&continuation-token=")
    assert response.status_code == 200 and b"<ContinuationToken />" in response.content
    assert b"<IsTruncated>false</IsTruncated>" in response.content


def test_v1_url_encoding_leaves_prefix_alone_v2_encodes_it(gw, s3, bucket):
    s3.put_object(Bucket=bucket, Key="a b/c d", Body=b"x")
    v1 = gw.raw("GET", f"/{bucket}", query="prefix=a%20b%2F&encoding-type=url").text
    assert "<Prefix>a b/</Prefix>" in v1 and "<Key>a%20b/c%20d</Key>" in v1
    v2 = gw.raw("GET", f"/{bucket}", query="list-type=2&prefix=a%20b%2F&encoding-type=url").text
    assert "<Prefix>a%20b/</Prefix>" in v2
    # boto3 asks for url encoding itself and decodes exactly what S3 encodes: all come back as written
    assert s3.list_objects(Bucket=bucket, Prefix="a b/")["Prefix"] == "a b/"
    assert s3.list_objects_v2(Bucket=bucket, Prefix="a b/")["Prefix"] == "a b/"
    assert s3.list_objects(Bucket=bucket, Prefix="a b/")["Contents"][0]["Key"] == "a b/c d"


def test_max_buckets(gw):
    client = gw.client(access_key=OTHER)
    names = [f"mb-{i}-{next(_names)}" for i in range(3)]
    for name in names:
        client.create_bucket(Bucket=name)
    first = client.list_buckets(MaxBuckets=2)
    assert [b["Name"] for b in first["Buckets"]] == sorted(names)[:2] and first["ContinuationToken"]
    rest = client.list_buckets(MaxBuckets=2, ContinuationToken=first["ContinuationToken"])
    assert [b["Name"] for b in rest["Buckets"]] == sorted(names)[2:] and "ContinuationToken" not in rest


def test_expired_presigned_urls_are_403(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    get = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1)
    put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1)
    time.sleep(2.2)
    for response in (httpx.get(get), httpx.put(put, content=b"overwritten")):
        assert response.status_code == 403 and b"<Code>AccessDenied</Code>" in response.content
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


# ---- operations tools call -------------------------------------------------------------------------------

def test_list_object_versions_of_an_unversioned_bucket(s3, bucket):
    for key in ("a", "b/1", "b/2", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    versions = s3.list_object_versions(Bucket=bucket)
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in versions["Versions"]] == \
        [("a", "null", True), ("b/1", "null", True), ("b/2", "null", True), ("c", "null", True)]
    assert "DeleteMarkers" not in versions and versions["IsTruncated"] is False
    page = s3.list_object_versions(Bucket=bucket, MaxKeys=2, Delimiter="/")
    assert [v["Key"] for v in page["Versions"]] == ["a"] and page["CommonPrefixes"] == [{"Prefix": "b/"}]
    assert page["IsTruncated"] and page["NextKeyMarker"] == "b/"
    rest = s3.list_object_versions(Bucket=bucket, Delimiter="/", KeyMarker=page["NextKeyMarker"])
    assert [v["Key"] for v in rest["Versions"]] == ["c"]
    # how tools empty a bucket: every listed version deleted, then the bucket
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]}
                                                         for v in versions["Versions"]]})
    s3.delete_bucket(Bucket=bucket)


def test_acls(gw, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for acl in (s3.get_bucket_acl(Bucket=bucket), s3.get_object_acl(Bucket=bucket, Key="k")):
        assert acl["Owner"]["ID"] == gw.access_key
        assert [(g["Grantee"]["ID"], g["Permission"]) for g in acl["Grants"]] == [(gw.access_key, "FULL_CONTROL")]
    s3.put_bucket_acl(Bucket=bucket, ACL="private")  # what it already is: accepted
    s3.put_object_acl(Bucket=bucket, Key="k", ACL="private")
    for call in (lambda: s3.put_bucket_acl(Bucket=bucket, ACL="public-read"),
                 lambda: s3.put_object_acl(Bucket=bucket, Key="k", GrantRead=f"id={OTHER}"),
                 lambda: s3.put_bucket_acl(Bucket=bucket, AccessControlPolicy={
                     "Owner": {"ID": gw.access_key},
                     "Grants": [{"Grantee": {"ID": OTHER, "Type": "CanonicalUser"}, "Permission": "READ"}]})):
        with pytest.raises(ClientError) as info:
            call()
        assert (status(info), code(info)) == (400, "AccessControlListNotSupported")
        assert "grants" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        s3.get_object_acl(Bucket=bucket, Key="absent")
    assert code(info) == "NoSuchKey"


CORS = {"CORSRules": [{"AllowedOrigins": ["https://app.example.com"], "AllowedMethods": ["GET", "PUT"],
                       "AllowedHeaders": ["x-amz-*", "content-type"], "ExposeHeaders": ["ETag"],
                       "MaxAgeSeconds": 600},
                      {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}]}


def test_cors_configuration_and_preflight(gw, s3, bucket):
    with pytest.raises(ClientError) as info:
        s3.get_bucket_cors(Bucket=bucket)
    assert (status(info), code(info)) == (404, "NoSuchCORSConfiguration")
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT"}
    assert gw.raw("OPTIONS", f"/{bucket}/k", headers=preflight, sign=False).status_code == 403
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]["AllowedHeaders"] == ["x-amz-*", "content-type"]
    response = gw.raw("OPTIONS", f"/{bucket}/k", sign=False,
                      headers={**preflight, "Access-Control-Request-Headers": "Content-Type, X-Amz-Meta-A"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "PUT" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-max-age"] == "600"
    assert response.headers["access-control-allow-headers"] == "content-type, x-amz-meta-a"
    refused = gw.raw("OPTIONS", f"/{bucket}/k", sign=False,
                     headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"})
    assert refused.status_code == 403 and b"AccessForbidden" in refused.content
    anyone = gw.raw("OPTIONS", f"/{bucket}/k", sign=False,
                    headers={"Origin": "https://other.example", "Access-Control-Request-Method": "GET"})
    assert anyone.status_code == 200 and anyone.headers["access-control-allow-origin"] == "*"
    assert gw.raw("OPTIONS", f"/{bucket}/k", sign=False).status_code == 400  # no Origin
    # an actual browser request gets the headers too
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    got = gw.raw("GET", f"/{bucket}/k", headers={"Origin": "https://app.example.com"})
    assert got.headers["access-control-allow-origin"] == "https://app.example.com"
    assert got.headers["access-control-expose-headers"] == "ETag"
    with pytest.raises(ClientError) as info:  # changing CORS is the owner's
        gw.client(access_key=OTHER).put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    assert status(info) == 403
    with pytest.raises(ClientError) as info:
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
            {"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]})
    assert code(info) == "InvalidRequest"
    s3.delete_bucket_cors(Bucket=bucket)
    with pytest.raises(ClientError):
        s3.get_bucket_cors(Bucket=bucket)


def _post(gw, presigned: dict, data: bytes, extra: dict | None = None):
    fields = dict(presigned["fields"], **(extra or {}))
    return httpx.post(presigned["url"], data=fields, files={"file": ("local.csv", data)}, timeout=30)


def test_browser_post_upload(gw, s3, bucket):
    presigned = s3.generate_presigned_post(
        bucket, "uploads/${filename}", Fields={"Content-Type": "text/csv", "x-amz-meta-who": "browser"},
        Conditions=[["starts-with", "$key", "uploads/"], {"Content-Type": "text/csv"},
                    {"x-amz-meta-who": "browser"}, ["content-length-range", 1, 1000]], ExpiresIn=60)
    response = _post(gw, presigned, b"a,b\n1,2\n")
    assert response.status_code == 204, response.text
    got = s3.get_object(Bucket=bucket, Key="uploads/local.csv")
    assert got["Body"].read() == b"a,b\n1,2\n" and got["ContentType"] == "text/csv"
    assert got["Metadata"] == {"who": "browser"}
    assert response.headers["etag"] == got["ETag"]
    created = _post(gw, presigned, b"x", {"success_action_status": "201"})
    assert created.status_code == 403  # success_action_status is not in the policy: an extra field
    too_big = _post(gw, presigned, b"x" * 1001)
    assert too_big.status_code == 400 and b"EntityTooLarge" in too_big.content
    empty = _post(gw, presigned, b"")
    assert empty.status_code == 400 and b"EntityTooSmall" in empty.content
    assert s3.get_object(Bucket=bucket, Key="uploads/local.csv")["Body"].read() == b"a,b\n1,2\n"


def test_browser_post_refusals(gw, s3, bucket):
    good = s3.generate_presigned_post(bucket, "k", ExpiresIn=60)
    tampered = dict(good["fields"], key="other")
    response = httpx.post(good["url"], data=tampered, files={"file": ("f", b"x")})
    assert response.status_code == 403  # key no longer matches the policy's condition
    forged = dict(good["fields"], **{"x-amz-signature": "0" * 64})
    response = httpx.post(good["url"], data=forged, files={"file": ("f", b"x")})
    assert response.status_code == 403 and b"SignatureDoesNotMatch" in response.content
    expired = s3.generate_presigned_post(bucket, "k", ExpiresIn=-10)
    response = _post(gw, expired, b"x")
    assert response.status_code == 403 and b"expired" in response.content
    other = gw.client(access_key=OTHER).generate_presigned_post(bucket, "k", ExpiresIn=60)
    response = _post(gw, other, b"x")
    assert response.status_code == 403  # a key without access to the bucket
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="k")
    unsigned = httpx.post(good["url"], data={"key": "k"}, files={"file": ("f", b"x")})
    assert unsigned.status_code == 400
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="k")
