"""Reading a request: path and key, query numbers, ranges, copy sources, metadata and stored headers,
and the conditional headers of reads, writes and copies. Pure functions; every bad input is an S3Error."""

from __future__ import annotations

import base64
import email.header
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, unquote_to_bytes

from .. import errors
from ..store import WriteCondition

MAX_KEY_BYTES = 1024
MAX_PART_NUMBER = 10000
# headers stored with an object and returned on GET/HEAD (S3's "system metadata" a client sets)
STORED_HEADERS = ("cache-control", "expires", "content-encoding", "content-disposition", "content-language")
RESPONSE_OVERRIDES = {"response-content-type": "content-type", "response-content-language": "content-language",
                      "response-expires": "expires", "response-cache-control": "cache-control",
                      "response-content-disposition": "content-disposition",
                      "response-content-encoding": "content-encoding"}
PRECONDITION = "At least one of the pre-conditions you specified did not hold"


class NotModified(Exception):
    """If-None-Match / If-Modified-Since hit: 304 with the object's ETag."""

    def __init__(self, etag: str):
        self.etag = etag


def split_path(raw_path: bytes) -> tuple[str, str]:
    """``/bucket/key`` -> (bucket, key), both percent-decoded UTF-8."""
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidURI("Couldn't parse the specified URI: the path is not UTF-8.") from None
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def check_key(key: str) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise errors.KeyTooLongError("Your key is too long")
    if "\x00" in key:
        raise errors.InvalidObjectName("Object key must not contain NUL characters")
    if ".." in key.split("/"):
        raise errors.InvalidObjectName("Object key must not contain '..' path segments")


def header_text(value: str) -> str:
    """A header value as text: raw UTF-8 bytes (the server hands them over as latin-1) and RFC 2047 encoded
    words (what S3 documents for non-ASCII metadata) are decoded; S3 stores the decoded text."""
    try:
        value = value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def user_metadata(headers) -> dict[str, str]:
    return {name[len("x-amz-meta-"):]: header_text(value) for name, value in headers.items()
            if name.startswith("x-amz-meta-")}


def stored_headers(headers) -> dict[str, str]:
    """Cache-Control, Expires, Content-Encoding, Content-Disposition, Content-Language as sent."""
    return {name: header_text(headers[name]) for name in STORED_HEADERS if name in headers}


def content_type(headers) -> str:
    return headers.get("content-type") or "binary/octet-stream"


def parse_int(value: str | None, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise errors.InvalidArgument(f"{name} must be an integer") from None
    if number < low:
        raise errors.InvalidArgument(f"{name} must be at least {low}")
    return min(number, high) if high is not None else number


def parse_part_number(value: str | None) -> int:
    try:
        number = int(value or "")
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PART_NUMBER:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    return number


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``a-`` / ``-n`` -> inclusive (start, end); None for no (or an unusable) Range header,
    which S3 answers with the whole object; InvalidRange when the range starts past the end."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise errors.InvalidRange("The requested range is not satisfiable")
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0:
        return None
    if start >= size:
        raise errors.InvalidRange("The requested range is not satisfiable")
    if end < start:
        return None
    return start, min(end, size - 1)


def parse_copy_range(header: str, size: int) -> tuple[int, int]:
    """UploadPartCopy's ``x-amz-copy-source-range: bytes=first-last``: both ends required and inside the
    source (S3 refuses a range past the end with 416 InvalidRange rather than copying a short part)."""
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    try:
        start, end = int(first), int(last)
    except ValueError:
        start = end = -1
    if unit.strip().lower() != "bytes" or not dash or start < 0 or end < start:
        raise errors.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last "
                                     "where first and last are the zero-based offsets of the first and last "
                                     "bytes to copy")
    if end >= size:
        raise errors.InvalidRange(f"The requested range bytes={start}-{end} is not satisfiable for a source "
                                  f"of {size} bytes")
    return start, end


def parse_copy_source(value: str) -> tuple[str, str]:
    source = value.strip()
    source, _, version = source.partition("?")
    if version and version not in ("versionId=null", "versionId="):
        raise errors.NotImplementedOp("copying a specific version is not supported")
    bucket, _, key = unquote(source).lstrip("/").partition("/")
    if not bucket or not key:
        raise errors.InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey")
    check_key(key)
    return bucket, key


def _matches(header: str, etag: str) -> bool:
    tags = {t.strip().strip('"') for t in header.split(",")}
    return "*" in tags or etag.strip('"') in tags


def _since(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def check_preconditions(headers, etag: str, last_modified: float) -> None:
    """If-Match / If-Unmodified-Since (412) and If-None-Match / If-Modified-Since (304), as RFC 7232 orders them."""
    if_match, if_none = headers.get("if-match"), headers.get("if-none-match")
    if if_match is not None and not _matches(if_match, etag):
        raise errors.PreconditionFailed(PRECONDITION, resource="If-Match")
    unmodified = _since(headers.get("if-unmodified-since"))
    if if_match is None and unmodified is not None and int(last_modified) > unmodified:
        raise errors.PreconditionFailed(PRECONDITION, resource="If-Unmodified-Since")
    if if_none is not None and _matches(if_none, etag):
        raise NotModified(etag)
    modified = _since(headers.get("if-modified-since"))
    if if_none is None and modified is not None and int(last_modified) <= modified:
        raise NotModified(etag)


def check_copy_source(headers, etag: str, last_modified: float) -> None:
    """``x-amz-copy-source-if-*``: every failure is 412. As S3 documents, a matching if-match wins over a
    failing if-unmodified-since, and a failing if-none-match decides over if-modified-since."""
    prefix = "x-amz-copy-source-"
    if_match, if_none = headers.get(prefix + "if-match"), headers.get(prefix + "if-none-match")
    if if_match is not None and not _matches(if_match, etag):
        raise errors.PreconditionFailed(PRECONDITION, resource="x-amz-copy-source-If-Match")
    unmodified = _since(headers.get(prefix + "if-unmodified-since"))
    if if_match is None and unmodified is not None and int(last_modified) > unmodified:
        raise errors.PreconditionFailed(PRECONDITION, resource="x-amz-copy-source-If-Unmodified-Since")
    if if_none is not None and _matches(if_none, etag):
        raise errors.PreconditionFailed(PRECONDITION, resource="x-amz-copy-source-If-None-Match")
    modified = _since(headers.get(prefix + "if-modified-since"))
    if if_none is None and modified is not None and int(last_modified) <= modified:
        raise errors.PreconditionFailed(PRECONDITION, resource="x-amz-copy-source-If-Modified-Since")


def write_condition(headers) -> WriteCondition | None:
    """PUT / CompleteMultipartUpload's If-None-Match (only ``*``, as S3) and If-Match."""
    if_none, if_match = headers.get("if-none-match"), headers.get("if-match")
    if if_none is None and if_match is None:
        return None
    if if_none is not None and if_none.strip() != "*":
        raise errors.NotImplementedOp("If-None-Match on a write supports only the value *",
                                      resource="If-None-Match")
    return WriteCondition(if_match=if_match, if_none_match=if_none is not None)


def encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode("utf-8", "surrogatepass")).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeError):
        raise errors.InvalidArgument("The continuation token provided is incorrect") from None
