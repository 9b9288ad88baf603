"""Fuzzing the request parser: random headers, XML bodies, ranges, keys and query strings, through the real
gateway. Whatever arrives, the answer is never a 500, and the data a request had no right to change (a
protected bucket, another key's bucket) is byte for byte what it was. Seeded and bounded (a few seconds)."""

from __future__ import annotations

import random
from urllib.parse import quote

import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from skystore_connector import errors
from skystore_connector.api import request as parsing
from skystore_connector.api.s3xml import parse_xml
from skystore_connector.testing import local_gateway

EAST = "aws-us-east-1"
OTHER = "SKYFUZZOTHER"
KEEP, PLAY = "keep-bucket", "play-bucket"
REQUESTS = 700

BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
                  b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
                  b'<Delete><Object><Key>&lol3;</Key></Object></Delete>')
XXE = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b'<Delete><Object><Key>&x;</Key></Object></Delete>')
XML_BODIES = [
    b"", b"<", b"not xml", b"<Delete/>", b"<Delete><Object><Key>fuzz/a</Key></Object></Delete>",
    b"<Delete><Quiet>maybe</Quiet><Object><Key></Key></Object></Delete>", BILLION_LAUGHS, XXE,
    b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>99999</PartNumber><ETag>\"a\"</ETag></Part>"
    b"</CompleteMultipartUpload>",
    b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin></CORSRule></CORSConfiguration>",
    b"<CORSConfiguration><CORSRule><AllowedOrigin>**</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"
    b"<MaxAgeSeconds>x</MaxAgeSeconds></CORSRule></CORSConfiguration>",
    b"<CreateBucketConfiguration><LocationConstraint>mars-1</LocationConstraint></CreateBucketConfiguration>",
    b"<AccessControlPolicy><AccessControlList><Grant><Permission>READ</Permission></Grant>"
    b"</AccessControlList></AccessControlPolicy>",
    b"<a>" * 3000 + b"</a>" * 3000, b"\xff\xfe<\x00D\x00", "<Delete><Object><Key>\u00fc\U0001f600</Key></Object></Delete>".encode(),
]
KEYS = ["fuzz/a", "fuzz/b", "a", "%", "%zz", "..", "a/../b", "\x00", "ü/ß", "x" * 1100, "a?b", "sp ace", "+",
        "\ud800", "fuzz/" + "é" * 300, "//", "a\r\nb"]
READ_KEYS = ["keep/a", "keep/b", "keep/missing"]
QUERIES = ["", "acl", "cors", "uploads", "uploadId=nope", "partNumber=abc", "partNumber=2&uploadId=x",
           "partNumber=0", "partNumber=99999", "list-type=2&max-keys=-1", "max-keys=abc", "max-keys=0",
           "continuation-token=!!!", "list-type=2&continuation-token=%FF", "versions", "versions&max-keys=x",
           "delete", "location", "versioning", "encoding-type=bogus", "prefix=%FF", "max-buckets=0",
           "max-buckets=x", "response-content-type=a%0d%0ab", "tagging", "policy", "uploads&max-uploads=-5",
           "marker=%00", "delimiter=%FF%FE", "key-marker=a&version-id-marker=b"]
RANGES = ["bytes=", "bytes=5-2", "bytes=-0", "bytes=99999999999999999999-", "items=1-2", "bytes=1-2,3-4",
          "bytes=-", "bytes=0-0", "bytes=-99999", "bytes=a-b", "=", "bytes=3-"]
DATES = ["", "yesterday", "Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 32 Foo 2020"]


def random_headers(rng: random.Random) -> dict[str, str]:
    pool = {
        "Range": lambda: rng.choice(RANGES),
        "If-Match": lambda: rng.choice(["*", '"abc"', "", ",,,", '"' * 3]),
        "If-None-Match": lambda: rng.choice(["*", '"abc"', "", "W/\"x\""]),
        "If-Modified-Since": lambda: rng.choice(DATES),
        "If-Unmodified-Since": lambda: rng.choice(DATES),
        "x-amz-copy-source": lambda: rng.choice(["", "/", KEEP, f"{KEEP}/keep/a", f"/{KEEP}/keep/b", "%FF%FE",
                                                 f"{KEEP}/keep/a?versionId=3", f"{KEEP}/..", "nobucket/k"]),
        "x-amz-copy-source-range": lambda: rng.choice(RANGES),
        "x-amz-copy-source-if-match": lambda: rng.choice(["*", '"abc"', ""]),
        "x-amz-copy-source-if-modified-since": lambda: rng.choice(DATES),
        "x-amz-metadata-directive": lambda: rng.choice(["COPY", "REPLACE", "MOVE", ""]),
        "Content-MD5": lambda: rng.choice(["", "abc", "1B2M2Y8AsgTpgAmY7PhCfg==", "!!!!"]),
        "Content-Type": lambda: rng.choice(["", "multipart/form-data", "multipart/form-data; boundary=x",
                                            "text/plain", "a" * 300]),
        "x-amz-meta-x": lambda: rng.choice(["", "=?UTF-8?B?!!?=", "=?bogus?Q?x?=", "plain", "=?UTF-8?Q?caf=C3=A9?="]),
        "Cache-Control": lambda: rng.choice(["", "no-cache", "x" * 500]),
        "Expires": lambda: rng.choice(DATES),
        "Origin": lambda: rng.choice(["https://a.example", "", "*", "null"]),
        "Access-Control-Request-Method": lambda: rng.choice(["GET", "PATCH", ""]),
        "x-amz-acl": lambda: rng.choice(["private", "public-read", "bogus"]),
        "x-amz-grant-read": lambda: "id=someone",
        "x-amz-decoded-content-length": lambda: rng.choice(["-1", "abc", "5"]),
    }
    names = rng.sample(sorted(pool), rng.randint(0, 5))
    return {name: pool[name]() for name in names}


def random_body(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.5:
        return rng.choice(XML_BODIES)
    if kind < 0.8:
        return rng.randbytes(rng.randint(0, 2048))
    return b""


def send(client: httpx.Client, gw, rng: random.Random, method: str, path: str, query: str, headers: dict,
         body: bytes, access_key: str | None):
    url = gw.endpoint(EAST) + path + (f"?{query}" if query else "")
    if access_key is not None and rng.random() < 0.9:
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        try:
            S3SigV4Auth(Credentials(access_key, gw.config.access_keys[access_key]), "s3", EAST).add_auth(request)
        except Exception:  # noqa: BLE001 - a shape botocore itself cannot sign: send it unsigned
            pass
        else:
            prepared = request.prepare()
            url, headers = prepared.url, dict(prepared.headers)
    elif access_key is not None:  # a tampered signature
        headers = dict(headers, Authorization=f"AWS4-HMAC-SHA256 Credential={access_key}/20200101/{EAST}/s3/"
                                              "aws4_request, SignedHeaders=host, Signature=" + "0" * 64)
    encoded = {k: v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v for k, v in headers.items()}
    return client.request(method, url, headers=encoded, content=body)


def path_of(rng: random.Random, bucket: str, key: str | None) -> str:
    if key is None:
        return f"/{bucket}"
    if rng.random() < 0.2:  # sent raw, with whatever percent signs it has
        return f"/{bucket}/" + "".join(c if c.isascii() and c.isprintable() and c not in " ?#" else "%41"
                                        for c in key)
    return f"/{bucket}/" + quote(key.encode("utf-8", "surrogatepass"), safe="/")


def snapshot(gw, bucket: str) -> dict:
    store = gw.store
    objects = store.list_objects(bucket, max_keys=1000).objects
    state = {}
    for info in objects:
        found, chunks = store.get_object(bucket, info.key, EAST)
        state[info.key] = (b"".join(chunks), found.etag, found.content_type, found.metadata, found.headers)
    bucket_info = store.head_bucket(bucket)
    return {"objects": state, "owner": bucket_info.owner, "cors": bucket_info.cors,
            "uploads": store.list_multipart_uploads(bucket)}


@pytest.fixture(scope="module")
def gw():
    with local_gateway([EAST], access_keys={OTHER: "fuzz-other-secret"}, max_object_size=64 * 1024,
                       min_part_size=16) as gateway:
        s3 = gateway.client()
        for bucket in (KEEP, PLAY):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=KEEP, Key="keep/a", Body=b"protected a", CacheControl="max-age=1",
                      Metadata={"m": "v"})
        s3.put_object(Bucket=KEEP, Key="keep/b", Body=b"protected b" * 100)
        s3.put_bucket_cors(Bucket=KEEP, CORSConfiguration={"CORSRules": [
            {"AllowedOrigins": ["https://a.example"], "AllowedMethods": ["GET"]}]})
        gateway.client(access_key=OTHER).create_bucket(Bucket="other-bucket")
        gateway.client(access_key=OTHER).put_object(Bucket="other-bucket", Key="theirs", Body=b"theirs")
        yield gateway


def test_random_requests_never_500_and_never_touch_protected_data(gw):
    rng = random.Random(20261202)
    before = {b: snapshot(gw, b) for b in (KEEP, "other-bucket")}
    statuses: dict[int, int] = {}
    failures = []
    with httpx.Client(timeout=30) as client:
        for i in range(REQUESTS):
            headers, body = random_headers(rng), random_body(rng)
            query = rng.choice(QUERIES)
            target = rng.random()
            if target < 0.45:  # anything at all on the play bucket, by its owner
                method = rng.choice(["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"])
                key = rng.choice(KEYS + [None, None])
                path, signer = path_of(rng, PLAY, key), gw.access_key
            elif target < 0.7:  # reads (and preflights) of the protected bucket, by its owner
                method = rng.choice(["GET", "HEAD", "OPTIONS"])
                path, signer = path_of(rng, KEEP, rng.choice(READ_KEYS + [None])), gw.access_key
            elif target < 0.9:  # anything, by a key with no access, or unsigned / badly signed
                method = rng.choice(["GET", "HEAD", "PUT", "POST", "DELETE"])
                bucket = rng.choice([KEEP, "other-bucket"])
                signer = rng.choice([OTHER if bucket == KEEP else gw.access_key, None])
                path = path_of(rng, bucket, rng.choice(READ_KEYS + ["theirs", None]))
            else:  # the service
                method, path, signer = rng.choice(["GET", "PUT", "POST", "DELETE"]), "/", gw.access_key
            try:
                response = send(client, gw, rng, method, path, query, headers, body, signer)
            except httpx.HTTPError as e:  # the gateway may close a connection after an error: never a crash
                failures.append((i, method, path, query, headers, repr(e)))
                continue
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500 and response.status_code != 501:
                failures.append((i, method, path, query, headers, response.status_code, response.text[:300]))
    assert not failures, failures[:5]
    assert {b: snapshot(gw, b) for b in (KEEP, "other-bucket")} == before
    assert gw.client().get_object(Bucket=KEEP, Key="keep/a")["Body"].read() == b"protected a"
    print("fuzz statuses", sorted(statuses.items()))
    assert sum(statuses.values()) == REQUESTS and len(statuses) > 5  # the requests reached many answers


def test_request_xml_refuses_entities_and_dtds():
    for body in (BILLION_LAUGHS, XXE):
        with pytest.raises(errors.MalformedXML):
            parse_xml(body, "Delete")


def test_parsers_raise_only_s3_errors():
    rng = random.Random(7)
    alphabet = "bytes=-,0123456789 ab*\"%\x00é"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        size = rng.randint(0, 50)
        for parse in (lambda: parsing.parse_range(text, size), lambda: parsing.parse_copy_range(text, size),
                      lambda: parsing.parse_copy_source(text), lambda: parsing.check_key(text),
                      lambda: parsing.header_text(text), lambda: parsing.decode_token(text),
                      lambda: parsing.check_preconditions({"if-match": text, "if-modified-since": text}, "e", 1.0),
                      lambda: parsing.check_copy_source({"x-amz-copy-source-if-unmodified-since": text}, "e", 1.0),
                      lambda: parsing.parse_int(text, "n", 0)):
            try:
                result = parse()
            except (errors.S3Error, parsing.NotModified):
                continue
            if isinstance(result, tuple) and all(isinstance(v, int) for v in result):  # a range
                start, end = result
                assert 0 <= start <= end < max(size, 1), (text, size, result)
