"""S3 conformance of what loses data or lets a key in: conditional writes, bucket ownership, stored
headers and unicode metadata. boto3 and raw HTTP against the real gateway on loopback."""

from __future__ import annotations

import gzip
import threading
import time
from email.utils import formatdate

import pytest
from botocore.exceptions import ClientError

from skystore_connector.config import Config, ConfigError
from skystore_connector.testing import local_gateway
from conftest import code, status  # noqa: E402

EAST = "aws-us-east-1"
OTHER, READER, WRITER = "SKYOTHERKEY", "SKYREADERKEY", "SKYWRITERKEY"


@pytest.fixture(scope="module")
def gw():
    keys = {OTHER: "other-secret", READER: "reader-secret", WRITER: "writer-secret"}
    with local_gateway([EAST], access_keys=keys, grants={"shared": {READER: "read", WRITER: "write"}},
                       min_part_size=1024) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def s3(gw):
    return gw.client()


_names = iter(range(10**6))


@pytest.fixture
def bucket(s3):
    name = f"w-{next(_names)}"
    s3.create_bucket(Bucket=name)
    return name


def body_of(s3, bucket, key) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


# ---- conditional writes -------------------------------------------------------------------------------------

def test_put_if_none_match_star_refuses_an_existing_key(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")  # absent: written
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert (status(info), code(info)) == (412, "PreconditionFailed")
    assert body_of(s3, bucket, "k") == b"first"


def test_put_if_match(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert (status(info), code(info)) == (412, "PreconditionFailed")
    assert body_of(s3, bucket, "k") == b"v1"
    new = s3.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=etag)["ETag"]
    assert body_of(s3, bucket, "k") == b"v2" and new != etag
    with pytest.raises(ClientError) as info:  # S3: If-Match on a missing key is 404
        s3.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch=etag)
    assert (status(info), code(info)) == (404, "NoSuchKey")


def test_if_none_match_other_than_star_is_refused_raw(gw, bucket):
    response = gw.raw("PUT", f"/{bucket}/k", body=b"x", headers={"If-None-Match": '"abc"'})
    assert response.status_code == 501 and b"NotImplemented" in response.content


def test_racing_conditional_creates_one_wins(gw, s3, bucket):
    """Both writers pass the early check; the commit's check lets exactly one through."""
    barrier = threading.Barrier(8)
    outcomes = []

    def create(i: int) -> None:
        client = gw.client()
        barrier.wait()
        try:
            client.put_object(Bucket=bucket, Key="once", Body=f"writer {i}".encode(), IfNoneMatch="*")
            outcomes.append(("ok", i))
        except ClientError as e:
            outcomes.append((e.response["Error"]["Code"], i))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [i for result, i in outcomes if result == "ok"]
    assert len(winners) == 1 and {r for r, _ in outcomes} <= {"ok", "PreconditionFailed"}
    assert body_of(s3, bucket, "once") == f"writer {winners[0]}".encode()


def test_complete_multipart_if_none_match(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"there")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"x" * 10)["ETag"]
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, IfNoneMatch="*",
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert code(info) == "PreconditionFailed" and body_of(s3, bucket, "k") == b"there"


def test_copy_source_conditions(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="src", Body=b"source")["ETag"]
    modified = s3.head_object(Bucket=bucket, Key="src")["LastModified"]
    before, after = formatdate(modified.timestamp() - 3600, usegmt=True), formatdate(time.time() + 3600, usegmt=True)
    source = {"Bucket": bucket, "Key": "src"}
    refused = [{"CopySourceIfMatch": '"ffffffffffffffffffffffffffffffff"'}, {"CopySourceIfNoneMatch": etag},
               {"CopySourceIfModifiedSince": after}, {"CopySourceIfUnmodifiedSince": before}]
    for condition in refused:
        with pytest.raises(ClientError) as info:
            s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, **condition)
        assert (status(info), code(info)) == (412, "PreconditionFailed"), condition
        with pytest.raises(ClientError):
            s3.head_object(Bucket=bucket, Key="dst")  # nothing written
    allowed = [{"CopySourceIfMatch": etag}, {"CopySourceIfNoneMatch": '"ffff"'},
               {"CopySourceIfModifiedSince": before}, {"CopySourceIfUnmodifiedSince": after},
               # S3: a matching if-match wins over a failing if-unmodified-since
               {"CopySourceIfMatch": etag, "CopySourceIfUnmodifiedSince": before}]
    for condition in allowed:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, **condition)
        assert body_of(s3, bucket, "dst") == b"source"
    # UploadPartCopy honours them too
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    with pytest.raises(ClientError) as info:
        s3.upload_part_copy(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, CopySource=source,
                            CopySourceIfNoneMatch=etag)
    assert code(info) == "PreconditionFailed"
    assert s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload).get("Parts", []) == []


# ---- ownership ------------------------------------------------------------------------------------------------

def test_a_bucket_belongs_to_its_creator(gw, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"mine")
    other = gw.client(access_key=OTHER)
    calls = [lambda: other.head_bucket(Bucket=bucket), lambda: other.list_objects_v2(Bucket=bucket),
             lambda: other.get_object(Bucket=bucket, Key="k"), lambda: other.head_object(Bucket=bucket, Key="k"),
             lambda: other.put_object(Bucket=bucket, Key="k", Body=b"theirs"),
             lambda: other.delete_object(Bucket=bucket, Key="k"),
             lambda: other.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]}),
             lambda: other.create_multipart_upload(Bucket=bucket, Key="m"),
             lambda: other.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "k"}),
             lambda: other.get_bucket_acl(Bucket=bucket), lambda: other.delete_bucket(Bucket=bucket)]
    for call in calls:
        with pytest.raises(ClientError) as info:
            call()
        assert status(info) == 403, call
    assert body_of(s3, bucket, "k") == b"mine"
    assert bucket not in [b["Name"] for b in other.list_buckets()["Buckets"]]
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as info:  # the name is taken by another key
        other.create_bucket(Bucket=bucket)
    assert (status(info), code(info)) == (409, "BucketAlreadyExists")
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket=bucket)
    assert code(info) == "BucketAlreadyOwnedByYou"


def test_copying_out_of_someone_elses_bucket_is_refused(gw, s3, bucket):
    s3.put_object(Bucket=bucket, Key="secret", Body=b"s")
    other = gw.client(access_key=OTHER)
    theirs = f"theirs-{next(_names)}"
    other.create_bucket(Bucket=theirs)
    with pytest.raises(ClientError) as info:
        other.copy_object(Bucket=theirs, Key="stolen", CopySource={"Bucket": bucket, "Key": "secret"})
    assert status(info) == 403
    with pytest.raises(ClientError):
        other.head_object(Bucket=theirs, Key="stolen")


def test_grants_from_the_config(gw, s3):
    try:
        s3.create_bucket(Bucket="shared")
    except ClientError:
        pass
    s3.put_object(Bucket="shared", Key="k", Body=b"data")
    reader, writer = gw.client(access_key=READER), gw.client(access_key=WRITER)
    assert reader.get_object(Bucket="shared", Key="k")["Body"].read() == b"data"
    assert [o["Key"] for o in reader.list_objects_v2(Bucket="shared")["Contents"]] == ["k"]
    with pytest.raises(ClientError) as info:
        reader.put_object(Bucket="shared", Key="k", Body=b"overwrite")
    assert status(info) == 403
    writer.put_object(Bucket="shared", Key="w", Body=b"written")
    assert body_of(s3, "shared", "w") == b"written"
    with pytest.raises(ClientError) as info:  # deleting the bucket stays the owner's
        writer.delete_bucket(Bucket="shared")
    assert status(info) == 403
    elsewhere = f"w-{next(_names)}"
    s3.create_bucket(Bucket=elsewhere)
    with pytest.raises(ClientError) as info:  # a grant names one bucket
        reader.list_objects_v2(Bucket=elsewhere)
    assert status(info) == 403


def test_grant_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="not one of the configured access_keys"):
        Config.local(tmp_path, access_keys={"A": "s"}, grants={"b": {"B": "read"}})
    with pytest.raises(ConfigError, match="is not \"read\" or \"write\""):
        Config.local(tmp_path, access_keys={"A": "s", "B": "t"}, grants={"b": {"B": "admin"}})


def test_buckets_without_an_owner_belong_to_the_first_key(gw, s3):
    """Buckets made before owners existed (NULL owner) or by a key since removed: the operator's."""
    gw.store.meta.create_bucket("legacy", EAST, time.time(), owner=None)
    gw.store.meta.create_bucket("orphaned", EAST, time.time(), owner="SKYREMOVEDKEY")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "legacy" in names and "orphaned" in names
    s3.put_object(Bucket="legacy", Key="k", Body=b"x")
    with pytest.raises(ClientError) as info:
        gw.client(access_key=OTHER).get_object(Bucket="legacy", Key="k")
    assert status(info) == 403


def test_an_old_database_gains_the_new_columns(tmp_path):
    """A metadata database made before owners and stored headers keeps working (ALTER TABLE on open)."""
    import sqlalchemy as sa

    from skystore_connector.metadata import Metadata
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE buckets (name VARCHAR(63) PRIMARY KEY, region VARCHAR(64) NOT NULL, "
                             "created FLOAT NOT NULL)")
        conn.exec_driver_sql("INSERT INTO buckets VALUES ('old', 'aws-us-east-1', 1.0)")
    engine.dispose()
    meta = Metadata(url)
    try:
        found = meta.bucket("old")
        assert found is not None and found.owner is None and found.cors is None
    finally:
        meta.close()


# ---- stored headers and metadata ---------------------------------------------------------------------------

STORED = {"CacheControl": "max-age=3600", "ContentDisposition": 'attachment; filename="a.csv"',
          "ContentEncoding": "gzip", "ContentLanguage": "de-CH", "Expires": "Thu, 01 Dec 2033 16:00:00 GMT"}


def _check_stored(response) -> None:
    for name, value in STORED.items():
        got = response[name]
        if name == "Expires":
            assert got.year == 2033, got
        else:
            assert got == value, name


def test_headers_are_stored_on_put_and_returned(s3, bucket):
    data = gzip.compress(b"a,b\n1,2\n")
    s3.put_object(Bucket=bucket, Key="a.csv.gz", Body=data, **STORED)
    _check_stored(s3.head_object(Bucket=bucket, Key="a.csv.gz"))
    got = s3.get_object(Bucket=bucket, Key="a.csv.gz")
    _check_stored(got)
    assert got["Body"].read() == data
    # response-* overrides still win
    assert s3.get_object(Bucket=bucket, Key="a.csv.gz", ResponseCacheControl="no-cache")["CacheControl"] == "no-cache"


def test_headers_travel_with_multipart_and_copy(s3, bucket):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", **STORED)["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=b"p")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    _check_stored(s3.head_object(Bucket=bucket, Key="mp"))
    s3.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "mp"})
    _check_stored(s3.head_object(Bucket=bucket, Key="copied"))
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource={"Bucket": bucket, "Key": "mp"},
                   MetadataDirective="REPLACE", CacheControl="no-store")
    head = s3.head_object(Bucket=bucket, Key="replaced")
    assert head["CacheControl"] == "no-store" and "ContentEncoding" not in head


def test_unicode_user_metadata_raw_utf8_and_rfc2047(gw, s3, bucket):
    """Raw UTF-8 header bytes (what browsers and some SDKs send) verify and are stored as text; RFC 2047
    encoded words are decoded on the way in and non-ASCII values go out RFC 2047 encoded, as S3 does."""
    text = "café ☕ Zürich"
    response = gw.raw("PUT", f"/{bucket}/u", body=b"x",
                      headers={"x-amz-meta-name": text})
    assert response.status_code == 200, response.text
    assert gw.store.head_object(bucket, "u", EAST).metadata == {"name": text}
    head = gw.raw("HEAD", f"/{bucket}/u")
    assert head.headers["x-amz-meta-name"].startswith("=?UTF-8?B?")
    import email.header
    assert str(email.header.make_header(email.header.decode_header(head.headers["x-amz-meta-name"]))) == text
    s3.put_object(Bucket=bucket, Key="v", Body=b"x", Metadata={"name": "=?UTF-8?B?Y2Fmw6k=?="})
    assert gw.store.head_object(bucket, "v", EAST).metadata == {"name": "café"}
