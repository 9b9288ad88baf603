"""SigV4 verification against botocore's own signer and AWS's published chunked-upload example."""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from skystore_connector import errors
from skystore_connector.sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    SigV4Verifier,
    XAmzContentSHA256Mismatch,
    chunk_string_to_sign,
    sign,
    trailer_string_to_sign,
    verified_body,
)

AK, SK = "AKIDTESTKEY", "test/secret+key"
REGION = "aws-eu-west-1"


def signed(method="GET", url="http://127.0.0.1:9000/bucket/key", body=b"", headers=None, *, secret=SK,
           region=REGION, auth_class=S3SigV4Auth):
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    auth_class(Credentials(AK, secret), "s3", region).add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    # the HTTP client adds Host from the URL; botocore signed that value
    return method, parts.path, parts.query, [("Host", parts.netloc), *prepared.headers.items()]


def presigned(url, *, expires=60, secret=SK):
    request = AWSRequest(method="GET", url=url)
    S3SigV4QueryAuth(Credentials(AK, secret), "s3", REGION, expires=expires).add_auth(request)
    parts = urlsplit(request.prepare().url)
    return "GET", parts.path, parts.query, [("host", parts.netloc)]


@pytest.fixture
def verifier():
    return SigV4Verifier({AK: SK})


def test_header_signature_from_botocore(verifier):
    url = "http://127.0.0.1:9000/bucket/dir/a%20b%2Bc~%C3%A9.txt?list-type=2&prefix=a%2Fb&uploads"
    result = verifier.verify(*signed(url=url, headers={"Range": "bytes=0-9", "x-amz-meta-k": "  v   w "}))
    assert result.access_key == AK and result.region == REGION and not result.presigned
    assert result.payload_hash == hashlib.sha256(b"").hexdigest()


def test_put_with_payload_and_unsigned_payload(verifier):
    body = b"hello world" * 100
    method, path, query, headers = signed("PUT", body=body, headers={"Content-Type": "text/plain"})
    result = verifier.verify(method, path, query, headers)
    assert b"".join(verified_body(result, [body[:7], body[7:]], {})) == body
    method, path, query, headers = signed("PUT", body=body, auth_class=SigV4Auth,
                                          headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    result = verifier.verify(method, path, query, headers)
    assert b"".join(verified_body(result, [b"anything"], {})) == b"anything"


@pytest.mark.parametrize("tamper", ["path", "query", "header", "method", "secret"])
def test_tampered_requests_fail(verifier, tamper):
    method, path, query, headers = signed("PUT", url="http://h:1/b/k?partNumber=1&uploadId=x",
                                          headers={"x-amz-meta-a": "1"}, secret="wrong" if tamper == "secret" else SK)
    if tamper == "path":
        path = "/b/other"
    elif tamper == "query":
        query = query.replace("partNumber=1", "partNumber=2")
    elif tamper == "header":
        headers = [(k, "2" if k.lower() == "x-amz-meta-a" else v) for k, v in headers]
    elif tamper == "method":
        method = "DELETE"
    with pytest.raises(errors.SignatureDoesNotMatch):
        verifier.verify(method, path, query, headers)


def test_body_hash_mismatch_raised_before_last_piece(verifier):
    result = verifier.verify(*signed("PUT", body=b"good body"))
    seen = []
    with pytest.raises(XAmzContentSHA256Mismatch) as info:
        for piece in verified_body(result, [b"bad ", b"body"], {}):
            seen.append(piece)
    assert info.value.status == 400 and b"".join(seen) != b"bad body"


def test_auth_failures():
    verifier = SigV4Verifier({AK: SK})
    with pytest.raises(errors.AccessDenied):
        verifier.verify("GET", "/b/k", "", [("host", "h")])
    with pytest.raises(errors.InvalidAccessKeyId):
        SigV4Verifier({"OTHER": SK}).verify(*signed())
    skewed = SigV4Verifier({AK: SK}, clock=lambda: time.time() + 16 * 60)
    with pytest.raises(errors.RequestTimeTooSkewed):
        skewed.verify(*signed())
    assert SigV4Verifier({AK: SK}, clock=lambda: time.time() + 14 * 60).verify(*signed())
    method, path, query, headers = signed()
    headers = [(k, v) for k, v in headers if k.lower() != "x-amz-content-sha256"]
    with pytest.raises(errors.S3Error) as info:  # botocore signed it; without it S3 refuses the request
        verifier.verify(method, path, query, headers)
    assert info.value.status in (400, 403)
    with pytest.raises(errors.InvalidRequest):
        verifier.verify("GET", "/b/k", "", [("authorization", "AWS AKID:c2ln"), ("host", "h")])
    with pytest.raises(errors.AuthorizationHeaderMalformed):
        verifier.verify("GET", "/b/k", "", [("authorization", "AWS4-HMAC-SHA256 Credential=x"), ("host", "h")])


def test_presigned_url(verifier):
    result = verifier.verify(*presigned("http://127.0.0.1:9000/bucket/some%20key.txt?versionId=null"))
    assert result.presigned and result.payload_hash == "UNSIGNED-PAYLOAD"
    method, path, query, headers = presigned("http://127.0.0.1:9000/bucket/k")
    with pytest.raises(errors.SignatureDoesNotMatch):
        verifier.verify(method, "/bucket/k2", query, headers)
    with pytest.raises(errors.SignatureDoesNotMatch):
        verifier.verify(*presigned("http://127.0.0.1:9000/bucket/k", secret="nope"))
    later = SigV4Verifier({AK: SK}, clock=lambda: time.time() + 120)
    with pytest.raises(errors.AccessDenied, match="expired"):
        later.verify(*presigned("http://127.0.0.1:9000/bucket/k", expires=60))


# AWS's documented example of a signed chunked upload (S3 API reference, "sigv4-streaming").
AWS_EXAMPLE_AK, AWS_EXAMPLE_SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
AWS_CHUNKS = [(65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"),
              (1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"),
              (0, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9")]


def aws_example(corrupt=False):
    headers = [
        ("Host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("Authorization", f"AWS4-HMAC-SHA256 Credential={AWS_EXAMPLE_AK}/20130524/us-east-1/s3/aws4_request,"
                          "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                          f"x-amz-decoded-content-length;x-amz-storage-class,Signature={AWS_SEED}"),
        ("x-amz-content-sha256", STREAMING_SIGNED), ("Content-Encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"), ("Content-Length", "66824")]
    body = b""
    for size, signature in AWS_CHUNKS:
        data = b"a" * size
        if corrupt and size == 1024:
            data = b"b" + data[1:]
        body += f"{size:x};chunk-signature={signature}\r\n".encode() + data + b"\r\n"
    assert len(body) == 66824
    return headers, body


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("piece", [1000, 7, 70000])
def test_aws_signed_chunked_example(piece):
    headers, body = aws_example()
    verifier = SigV4Verifier({AWS_EXAMPLE_AK: AWS_EXAMPLE_SK}, clock=lambda: 1369353600.0)
    result = verifier.verify("PUT", "/examplebucket/chunkObject.txt", "", headers)
    assert result.signature == AWS_SEED and result.chunked
    pieces = split(body, piece)
    decoded = b"".join(verified_body(result, pieces, {"x-amz-decoded-content-length": "66560"}))
    assert decoded == b"a" * 66560


def test_aws_signed_chunked_example_tampered():
    headers, body = aws_example(corrupt=True)
    verifier = SigV4Verifier({AWS_EXAMPLE_AK: AWS_EXAMPLE_SK}, clock=lambda: 1369353600.0)
    result = verifier.verify("PUT", "/examplebucket/chunkObject.txt", "", headers)
    with pytest.raises(errors.SignatureDoesNotMatch):
        b"".join(verified_body(result, split(body, 4096), {}))


def unsigned_trailer_body(data: bytes, trailer: str, value: str, chunk: int = 1000) -> bytes:
    out = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in split(data, chunk))
    return out + f"0\r\n{trailer}:{value}\r\n\r\n".encode()


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("algorithm", ["crc32", "sha256", "sha1", "crc32c"])
def test_unsigned_payload_trailer(verifier, algorithm):
    data = bytes(range(256)) * 50
    value = {"crc32": b64(zlib.crc32(data).to_bytes(4, "big")),
             "sha256": b64(hashlib.sha256(data).digest()),
             "sha1": b64(hashlib.sha1(data).digest()),
             "crc32c": "AAAAAA=="}[algorithm]  # crc32c is not computable with stdlib: accepted unverified
    trailer = f"x-amz-checksum-{algorithm}"
    headers = {"X-Amz-Content-SHA256": STREAMING_UNSIGNED_TRAILER, "Content-Encoding": "aws-chunked",
               "x-amz-trailer": trailer, "x-amz-decoded-content-length": str(len(data))}
    result = verifier.verify(*signed("PUT", body=b"", headers=headers, auth_class=SigV4Auth))
    lower = {k.lower(): v for k, v in headers.items()}
    body = unsigned_trailer_body(data, trailer, value)
    assert b"".join(verified_body(result, split(body, 333), lower)) == data
    if algorithm != "crc32c":
        bad = unsigned_trailer_body(data[:-1] + b"x", trailer, value)
        with pytest.raises(errors.BadDigest):
            b"".join(verified_body(result, [bad], lower))
    with pytest.raises(errors.IncompleteBody):  # the decoded length is signed: a short body is refused
        b"".join(verified_body(result, [unsigned_trailer_body(data[:100], trailer, value)], lower))


def test_signed_payload_trailer_chain(verifier):
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, framed with this module's own string-to-sign helpers."""
    headers = {"X-Amz-Content-SHA256": STREAMING_SIGNED_TRAILER, "Content-Encoding": "aws-chunked",
               "x-amz-trailer": "x-amz-checksum-crc32", "x-amz-decoded-content-length": "5000"}
    result = verifier.verify(*signed("PUT", headers=headers, auth_class=SigV4Auth))
    data, previous, body = b"z" * 5000, result.signature, b""
    for chunk in [data[:4096], data[4096:], b""]:
        previous = sign(result.signing_key, chunk_string_to_sign(result.amz_date, result.scope, previous,
                                                                 hashlib.sha256(chunk).hexdigest()))
        body += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk + (b"\r\n" if chunk else b"")
    crc = b64(zlib.crc32(data).to_bytes(4, "big"))
    trailer_sig = sign(result.signing_key, trailer_string_to_sign(result.amz_date, result.scope, previous,
                                                                  f"x-amz-checksum-crc32:{crc}\n".encode()))
    good = body + f"x-amz-checksum-crc32:{crc}\r\nx-amz-trailer-signature:{trailer_sig}\r\n\r\n".encode()
    lower = {k.lower(): v for k, v in headers.items()}
    assert b"".join(verified_body(result, split(good, 100), lower)) == data
    forged = body + f"x-amz-checksum-crc32:{crc}\r\nx-amz-trailer-signature:{'0' * 64}\r\n\r\n".encode()
    with pytest.raises(errors.SignatureDoesNotMatch):
        b"".join(verified_body(result, [forged], lower))


def test_malformed_chunked_bodies(verifier):
    headers = {"X-Amz-Content-SHA256": STREAMING_UNSIGNED_TRAILER, "Content-Encoding": "aws-chunked"}
    result = verifier.verify(*signed("PUT", headers=headers, auth_class=SigV4Auth))
    for body, error in [(b"zz\r\nabc\r\n0\r\n\r\n", errors.InvalidRequest),
                        (b"5\r\nabc", errors.IncompleteBody),
                        (b"3\r\nabcXY0\r\n\r\n", errors.InvalidRequest),
                        (b"3\r\nabc\r\n", errors.IncompleteBody),
                        (b"1" * 5000, errors.InvalidRequest)]:
        with pytest.raises(error):
            b"".join(verified_body(result, [body], {}))


def test_header_checksum_verified(verifier):
    data = b"payload" * 1000
    good = b64(zlib.crc32(data).to_bytes(4, "big"))
    result = verifier.verify(*signed("PUT", body=data, headers={"x-amz-checksum-crc32": good}))
    assert b"".join(verified_body(result, [data], {"x-amz-checksum-crc32": good})) == data
    with pytest.raises(errors.BadDigest):
        b"".join(verified_body(result, [data], {"x-amz-checksum-crc32": "AAAAAA=="}))
