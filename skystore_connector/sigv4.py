"""AWS Signature Version 4 verification for the S3 gateway.

Two forms of a signed request (AWS docs, "Authenticating Requests (AWS Signature Version 4)"):

* the ``Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`` header, with the
  payload described by ``x-amz-content-sha256`` (a hex SHA-256, ``UNSIGNED-PAYLOAD`` or one of the
  ``STREAMING-*`` aws-chunked encodings);
* a presigned URL (``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``,
  ``X-Amz-SignedHeaders``, ``X-Amz-Signature`` in the query; the payload is unsigned).

``SigV4Verifier.verify`` checks the signature of the request line and headers and returns a
``SignedRequest``; ``verified_body`` then wraps the body's byte chunks: it decodes aws-chunked bodies,
checks chunk signatures, the declared SHA-256 and any ``x-amz-checksum-*`` value as the bytes stream past,
and raises before handing over the last bytes when something does not match (so a consumer that stops
after the declared size still sees the error).
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_tz, mktime_tz
from functools import lru_cache
from urllib.parse import quote, unquote, unquote_to_bytes

from .errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    BadDigest,
    IncompleteBody,
    InvalidArgument,
    InvalidDigest,
    InvalidRequest,
    InvalidAccessKeyId,
    NotImplementedOp,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
)

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES = (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW_SECONDS = 15 * 60
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_UNRESERVED = "-_.~"  # with letters and digits: what AWS leaves unencoded
_MAX_CHUNK_LINE = 4096
# Flexible-checksum algorithms S3 knows; of these, crc32/sha1/sha256 are verified (stdlib), the rest accepted.
CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


@dataclass(frozen=True)
class SignedRequest:
    """What a verified signature tells the gateway, and what the body check needs."""

    access_key: str
    region: str  # the credential scope's region (the client's idea of where it is)
    service: str
    amz_date: str  # ISO 8601 basic, e.g. 20130524T000000Z
    scope: str  # date/region/service/aws4_request
    signing_key: bytes
    signature: str  # the seed signature of chunked bodies
    payload_hash: str  # hex SHA-256, UNSIGNED-PAYLOAD or a STREAMING-* mode
    presigned: bool

    @property
    def chunked(self) -> bool:
        return self.payload_hash in STREAMING_MODES


# --- canonical request pieces ------------------------------------------------------------------------------


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """Percent-encode every byte of UTF-8 ``text`` except A-Z a-z 0-9 - _ . ~ (and '/' when ``keep_slash``)."""
    return quote(text, safe=_UNRESERVED + ("/" if keep_slash else ""))


def canonical_uri_candidates(raw_path: str) -> list[str]:
    """The canonical URI as AWS defines it for S3 (decode, then encode each segment once, no dot-segment
    normalisation), then the path exactly as sent: a client that signed the bytes it sent is also right."""
    path = raw_path or "/"
    try:  # the gateway hands the raw request-target bytes over as latin-1 text
        raw = path.encode("latin-1")
    except UnicodeEncodeError:
        raw = path.encode("utf-8")
    encoded = quote(unquote_to_bytes(raw), safe=_UNRESERVED + "/")
    return [encoded] if encoded == path else [encoded, path]


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs in order; a name without '=' has the value ''. '+' is kept literally:
    AWS SDKs send spaces as %20, and the signature covers the query as sent."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_query(pairs: Iterable[tuple[str, str]], *, exclude: str | None = None) -> str:
    encoded = sorted((uri_encode(n), uri_encode(v)) for n, v in pairs if n != exclude)
    return "&".join(f"{n}={v}" for n, v in encoded)


def canonical_headers(headers: Mapping[str, list[str]], signed: list[str]) -> str:
    lines = []
    for name in signed:
        values = headers.get(name, [])
        lines.append(name + ":" + ",".join(" ".join(v.split()) for v in values) + "\n")
    return "".join(lines)


def canonical_request(method: str, uri: str, query: str, headers: Mapping[str, list[str]], signed: list[str],
                      payload_hash: str) -> str:
    return "\n".join([method, uri, query, canonical_headers(headers, signed), ";".join(signed), payload_hash])


@lru_cache(maxsize=256)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(key: bytes, string_to_sign: str) -> str:
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def chunk_string_to_sign(amz_date: str, scope: str, previous_signature: str, chunk_sha256: str) -> str:
    return "\n".join([ALGORITHM + "-PAYLOAD", amz_date, scope, previous_signature, EMPTY_SHA256, chunk_sha256])


def trailer_string_to_sign(amz_date: str, scope: str, previous_signature: str, trailer_lines: bytes) -> str:
    return "\n".join([ALGORITHM + "-TRAILER", amz_date, scope, previous_signature,
                      hashlib.sha256(trailer_lines).hexdigest()])


def parse_amz_date(value: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, _AMZ_DATE_FORMAT)))
    except (ValueError, TypeError):
        raise AccessDenied(f"invalid date {value!r}: expected ISO 8601 basic, e.g. 20130524T000000Z") from None


# --- request verification ----------------------------------------------------------------------------------


def _signed_text(value: str) -> str:
    """The header value the client signed. The server hands header bytes over as latin-1 text; a client that
    sent UTF-8 (non-ASCII user metadata) signed the UTF-8 text, which the canonical request re-encodes."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


class SigV4Verifier:
    """Checks SigV4 signatures against a fixed table of access keys."""

    def __init__(self, credentials: Mapping[str, str], *, clock=time.time, max_skew: float = MAX_SKEW_SECONDS):
        self._credentials = dict(credentials)
        self._clock = clock
        self._max_skew = max_skew

    def verify(self, method: str, raw_path: str, raw_query: str, headers: Iterable[tuple[str, str]]) -> SignedRequest:
        """Verify the request line and headers; ``headers`` as received (any case, repeats allowed)."""
        table: dict[str, list[str]] = {}
        for name, value in headers:
            table.setdefault(name.lower(), []).append(_signed_text(value))
        query = parse_query(raw_query)
        names = {n for n, _ in query}
        auth = (table.get("authorization") or [""])[0].strip()
        if auth:
            if "X-Amz-Signature" in names or "X-Amz-Credential" in names:
                raise InvalidArgument("only one auth mechanism allowed: Authorization header or presigned query")
            return self._verify_header(method, raw_path, query, table, auth)
        if "X-Amz-Signature" in names or "X-Amz-Algorithm" in names:
            return self._verify_presigned(method, raw_path, query, table)
        if "Signature" in names and "AWSAccessKeyId" in names:
            raise InvalidRequest("Signature Version 2 is not supported; please use AWS4-HMAC-SHA256")
        raise AccessDenied("Access Denied: the request is not signed")

    def _verify_header(self, method, raw_path, query, table, auth: str) -> SignedRequest:
        algorithm, _, rest = auth.partition(" ")
        if algorithm != ALGORITHM:
            raise InvalidRequest("The authorization mechanism you have provided is not supported. "
                                 f"Please use {ALGORITHM}.")
        fields = {}
        for item in rest.split(","):
            key, sep, value = item.strip().partition("=")
            if sep:
                fields[key] = value.strip()
        if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
            raise AuthorizationHeaderMalformed("the Authorization header needs Credential, SignedHeaders and "
                                               "Signature")
        amz_date = self._header_date(table)
        payload = (table.get("x-amz-content-sha256") or [""])[0].strip()
        if not payload:
            raise InvalidRequest("Missing required header for this request: x-amz-content-sha256")
        self._check_payload_declaration(payload)
        now = self._clock()
        if abs(now - parse_amz_date(amz_date)) > self._max_skew:
            raise RequestTimeTooSkewed("The difference between the request time and the current time is too large.")
        return self._check(method, raw_path, canonical_query(query), table, fields["Credential"],
                           fields["SignedHeaders"], fields["Signature"], amz_date, payload, presigned=False)

    def _verify_presigned(self, method, raw_path, query, table) -> SignedRequest:
        params = dict(query)
        missing = [k for k in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders",
                               "X-Amz-Signature") if k not in params]
        if missing:
            raise AuthorizationHeaderMalformed(f"presigned URL lacks {', '.join(missing)}")
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise InvalidRequest(f"presigned URLs must use {ALGORITHM}")
        amz_date = params["X-Amz-Date"]
        signed_at = parse_amz_date(amz_date)
        try:
            expires = int(params.get("X-Amz-Expires", "604800"))
        except ValueError:
            raise AuthorizationHeaderMalformed("X-Amz-Expires must be a number of seconds") from None
        if not 0 <= expires <= MAX_PRESIGN_EXPIRES:
            raise AuthorizationHeaderMalformed("X-Amz-Expires must be between 0 and 604800 seconds")
        now = self._clock()
        if now + self._max_skew < signed_at:
            raise AccessDenied("Request is not valid yet")
        if now > signed_at + expires:
            raise AccessDenied("Request has expired")
        payload = params.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
        return self._check(method, raw_path, canonical_query(query, exclude="X-Amz-Signature"), table,
                           params["X-Amz-Credential"], params["X-Amz-SignedHeaders"], params["X-Amz-Signature"],
                           amz_date, payload, presigned=True)

    def verify_policy(self, credential: str, amz_date: str, policy: str, signature: str) -> SignedRequest:
        """A browser POST upload's form: ``signature`` must be the HMAC of the base64 ``policy`` under the
        credential's signing key (the policy's own expiry and conditions are checked by the caller)."""
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request" or parts[3] != "s3" or parts[1] != amz_date[:8]:
            raise AuthorizationHeaderMalformed(f"malformed x-amz-credential {credential!r}")
        parse_amz_date(amz_date)
        access_key, date, region, service, _ = parts
        secret = self._credentials.get(access_key)
        if secret is None:
            raise InvalidAccessKeyId("The AWS Access Key Id you provided does not exist in our records.")
        key = signing_key(secret, date, region, service)
        expected = sign(key, policy)
        if not hmac.compare_digest(expected, signature.strip().lower()):
            raise SignatureDoesNotMatch("The request signature we calculated does not match the signature you "
                                        "provided. Check your key and signing method.")
        scope = f"{date}/{region}/{service}/aws4_request"
        return SignedRequest(access_key, region, service, amz_date, scope, key, expected, UNSIGNED_PAYLOAD, False)

    @staticmethod
    def _header_date(table) -> str:
        value = (table.get("x-amz-date") or [""])[0].strip()
        if value:
            return value
        date = (table.get("date") or [""])[0].strip()
        parsed = parsedate_tz(date) if date else None
        if parsed is None:
            raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
        return time.strftime(_AMZ_DATE_FORMAT, time.gmtime(mktime_tz(parsed)))

    @staticmethod
    def _check_payload_declaration(payload: str) -> None:
        if payload in (UNSIGNED_PAYLOAD, *STREAMING_MODES):
            return
        if payload.startswith("STREAMING-"):
            raise NotImplementedOp(f"x-amz-content-sha256 {payload} is not supported")
        if len(payload) != 64 or any(c not in "0123456789abcdef" for c in payload.lower()):
            raise InvalidArgument("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-... or a SHA-256 "
                                  "hex digest")

    def _check(self, method, raw_path, query: str, table, credential: str, signed_headers: str, signature: str,
               amz_date: str, payload: str, *, presigned: bool) -> SignedRequest:
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise AuthorizationHeaderMalformed(f"malformed credential {credential!r}: expected "
                                               "ACCESS_KEY/DATE/REGION/SERVICE/aws4_request")
        access_key, date, region, service, _ = parts
        if date != amz_date[:8]:
            raise AuthorizationHeaderMalformed(f"credential date {date} differs from the request date {amz_date}")
        if service != "s3":
            raise AuthorizationHeaderMalformed(f"credential service must be s3, not {service!r}")
        secret = self._credentials.get(access_key)
        if secret is None:
            raise InvalidAccessKeyId("The AWS Access Key Id you provided does not exist in our records.")
        signed = sorted(signed_headers.lower().split(";"))
        if "host" not in signed:
            raise AuthorizationHeaderMalformed("the host header must be signed")
        key = signing_key(secret, date, region, service)
        scope = f"{date}/{region}/{service}/aws4_request"
        for uri in canonical_uri_candidates(raw_path):
            canonical = canonical_request(method, uri, query, table, signed, payload)
            expected = sign(key, string_to_sign(amz_date, scope, canonical))
            if hmac.compare_digest(expected, signature.lower()):
                return SignedRequest(access_key, region, service, amz_date, scope, key, expected, payload, presigned)
        raise SignatureDoesNotMatch("The request signature we calculated does not match the signature you "
                                    "provided. Check your key and signing method.")


# --- body verification -------------------------------------------------------------------------------------


class _Checksum:
    """An ``x-amz-checksum-<algorithm>`` value to compare with the body's, when stdlib can compute it."""

    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        self._crc = 0
        self._hash = hashlib.new(algorithm) if algorithm in ("sha1", "sha256") else None

    @staticmethod
    def supported(algorithm: str) -> bool:
        return algorithm in ("crc32", "sha1", "sha256")

    def update(self, data) -> None:
        if self._hash is not None:
            self._hash.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)

    def value(self) -> str:
        digest = self._hash.digest() if self._hash is not None else self._crc.to_bytes(4, "big")
        return base64.b64encode(digest).decode()


def _checksum_algorithm(header: str) -> str:
    """"x-amz-checksum-crc32" -> "crc32"; "" for any other header."""
    header = header.lower()
    return header[len("x-amz-checksum-"):] if header.startswith("x-amz-checksum-") else ""


def verified_body(signed: SignedRequest, chunks: Iterable[bytes], headers: Mapping[str, str]) -> Iterator[bytes]:
    """The decoded body of a verified request, checked as it streams.

    ``headers`` maps lower-case names to values. Raises ``XAmzContentSHA256Mismatch``, ``SignatureDoesNotMatch``
    (a chunk signature), ``BadDigest`` (an ``x-amz-checksum-*`` value), ``IncompleteBody`` or
    ``InvalidRequest`` (malformed aws-chunked framing) before the last bytes are handed over.
    """
    expected_length = None
    if signed.chunked:
        declared = headers.get("x-amz-decoded-content-length")
        if declared is not None:
            try:
                expected_length = int(declared)
            except ValueError:
                raise InvalidArgument("x-amz-decoded-content-length must be an integer") from None
    header_checksums = [(k, v) for k, v in headers.items() if _checksum_algorithm(k) in CHECKSUM_ALGORITHMS]
    header_checksum = header_checksums[0] if header_checksums else None
    decoder = _AwsChunkedDecoder(signed, chunks) if signed.chunked else None
    source = decoder.decode() if decoder else chunks
    payload_hash = hashlib.sha256() if not signed.chunked and signed.payload_hash != UNSIGNED_PAYLOAD else None
    checksum = None
    wanted = header_checksum[0] if header_checksum else headers.get("x-amz-trailer", "").strip().lower()
    if wanted.startswith("x-amz-checksum-") and _Checksum.supported(_checksum_algorithm(wanted)):
        checksum = _Checksum(_checksum_algorithm(wanted))
    length = 0
    pending = None
    for piece in source:
        if not piece:
            continue
        length += len(piece)
        if payload_hash is not None:
            payload_hash.update(piece)
        if checksum is not None:
            checksum.update(piece)
        if pending is not None:
            yield pending
        pending = piece
    # Everything arrived: check it all before the consumer sees the last piece.
    if expected_length is not None and length != expected_length:
        raise IncompleteBody(f"x-amz-decoded-content-length is {expected_length} but the body decoded to {length} "
                             "bytes")
    if payload_hash is not None and payload_hash.hexdigest() != signed.payload_hash.lower():
        raise XAmzContentSHA256Mismatch("The provided 'x-amz-content-sha256' header does not match what was "
                                        "computed.")
    if checksum is not None:
        if header_checksum is not None:
            declared_value = header_checksum[1].strip()
        else:
            declared_value = (decoder.trailers if decoder else {}).get(wanted)
            if declared_value is None:
                raise InvalidRequest(f"the trailer {wanted} announced in x-amz-trailer is missing")
        if declared_value != checksum.value():
            raise BadDigest(f"The {checksum.algorithm.upper()} you specified did not match the calculated checksum.")
    if pending is not None:
        yield pending


class _ByteStream:
    """Pull-based reader over byte chunks for parsing framed data without copying large pieces twice."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buffer = bytearray()

    def _fill(self) -> bool:
        for piece in self._chunks:
            if piece:
                self._buffer += piece
                return True
        return False

    def line(self) -> bytes | None:
        """The next CRLF-terminated line without its CRLF; None at a clean end of stream."""
        start = 0
        while True:
            end = self._buffer.find(b"\r\n", start)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 2]
                return line
            if len(self._buffer) > _MAX_CHUNK_LINE:
                raise InvalidRequest("malformed aws-chunked body: chunk header line too long")
            start = max(0, len(self._buffer) - 1)
            if not self._fill():
                if self._buffer:
                    raise IncompleteBody("the aws-chunked body ended inside a chunk header")
                return None

    def exactly(self, n: int) -> Iterator[bytes]:
        """Yield pieces adding up to ``n`` bytes."""
        while n > 0:
            if not self._buffer:
                piece = next(self._chunks, None)
                if piece is None:
                    raise IncompleteBody("You did not provide the number of bytes specified by the chunk header")
                if len(piece) <= n:  # common case: hand the received piece on as is
                    n -= len(piece)
                    yield piece
                    continue
                self._buffer += piece
            take = min(n, len(self._buffer))
            piece = bytes(self._buffer[:take])
            del self._buffer[:take]
            n -= take
            yield piece


class _AwsChunkedDecoder:
    """Decodes ``Content-Encoding: aws-chunked`` bodies (AWS docs, "Signature Calculations for the
    Authorization Header: Transferring Payload in Multiple Chunks" and "...with trailing headers").

    Each chunk is ``hex-size[;chunk-signature=SIG]\\r\\n<data>\\r\\n``; the last has size 0 and is followed by
    trailer lines ``name:value\\r\\n`` (with ``x-amz-trailer-signature`` in the signed form) and an empty line.
    """

    def __init__(self, signed: SignedRequest, chunks: Iterable[bytes]):
        self._signed = signed
        self._stream = _ByteStream(chunks)
        self._signatures = signed.payload_hash in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        self._has_trailer = signed.payload_hash in (STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
        self._previous = signed.signature
        self.trailers: dict[str, str] = {}

    def decode(self) -> Iterator[bytes]:
        while True:
            header = self._stream.line()
            if header is None:
                raise IncompleteBody("the aws-chunked body ended before its final chunk")
            size, chunk_signature = self._parse_header(header)
            digest = hashlib.sha256() if self._signatures else None
            for piece in self._stream.exactly(size):
                if digest is not None:
                    digest.update(piece)
                yield piece
            if digest is not None:
                self._check_chunk(chunk_signature, digest.hexdigest())
            if size == 0:
                break
            if self._stream.line() != b"":
                raise InvalidRequest("malformed aws-chunked body: chunk data not followed by CRLF")
        self._read_trailers()

    def _parse_header(self, header: bytes) -> tuple[int, str | None]:
        size_text, _, extension = header.partition(b";")
        try:
            size = int(size_text.strip(), 16)
        except ValueError:
            raise InvalidRequest("malformed aws-chunked body: bad chunk size") from None
        if size < 0:
            raise InvalidRequest("malformed aws-chunked body: bad chunk size")
        signature = None
        if extension:
            name, _, value = extension.partition(b"=")
            if name.strip() == b"chunk-signature":
                signature = value.strip().decode("ascii", "replace")
        if self._signatures and signature is None:
            raise InvalidRequest("aws-chunked body: a chunk lacks its chunk-signature")
        return size, signature

    def _check_chunk(self, signature: str | None, chunk_sha256: str) -> None:
        s = self._signed
        expected = sign(s.signing_key, chunk_string_to_sign(s.amz_date, s.scope, self._previous, chunk_sha256))
        if signature is None or not hmac.compare_digest(expected, signature.lower()):
            raise SignatureDoesNotMatch("a chunk signature of the aws-chunked body does not match")
        self._previous = expected

    def _read_trailers(self) -> None:
        canonical = bytearray()
        trailer_signature = None
        while True:
            line = self._stream.line()
            if line is None or line == b"":
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise InvalidRequest("malformed aws-chunked body: bad trailer line")
            key = name.strip().lower().decode("latin-1")
            text = value.strip().decode("latin-1")
            if key == "x-amz-trailer-signature":
                trailer_signature = text
                continue
            self.trailers[key] = text
            canonical += f"{key}:{text}\n".encode("latin-1")
        if self._has_trailer and self._signatures:
            s = self._signed
            expected = sign(s.signing_key, trailer_string_to_sign(s.amz_date, s.scope, self._previous,
                                                                  bytes(canonical)))
            if trailer_signature is None or not hmac.compare_digest(expected, trailer_signature.lower()):
                raise SignatureDoesNotMatch("the trailer signature of the aws-chunked body does not match")


def check_content_md5(value: str) -> str:
    """Validate the syntax of a Content-MD5 header (base64 of 16 bytes); the store compares the digest."""
    try:
        if len(base64.b64decode(value, validate=True)) == 16:
            return value
    except ValueError:
        pass
    raise InvalidDigest("The Content-MD5 you specified was invalid.")
