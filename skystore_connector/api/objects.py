"""Object handlers: PUT (conditional), GET/HEAD (ranges, ?partNumber=N, preconditions), CopyObject (with
the copy-source conditions), DELETE and DeleteObjects."""

from __future__ import annotations

from anyio import to_thread
from starlette.responses import Response

from .. import errors
from ..access import READ, WRITE
from ..errors import S3Error
from .bodies import ObjectStreamResponse
from .call import Call, run
from .request import (RESPONSE_OVERRIDES, check_copy_source, check_key, check_preconditions, content_type,
                      parse_copy_source, parse_part_number, parse_range, stored_headers, user_metadata,
                      write_condition)
from .s3xml import add, child_text, children, header_value, http_date, iso_date, quote_etag, xml_response, xml_root

MAX_DELETE_KEYS = 1000


def object_headers(info, request_id: str) -> dict[str, str]:
    headers = {
        "x-amz-request-id": request_id,
        "etag": quote_etag(info.etag),
        "last-modified": http_date(info.last_modified),
        "content-type": header_value(info.content_type or "binary/octet-stream"),
        "accept-ranges": "bytes",
    }
    for name, value in (info.headers or {}).items():
        headers[name] = header_value(value)
    for name, value in (info.metadata or {}).items():
        headers["x-amz-meta-" + name] = header_value(value)
    return headers


def _apply_overrides(call: Call, headers: dict[str, str]) -> None:
    for param, header in RESPONSE_OVERRIDES.items():
        if param in call.query:
            headers[header] = header_value(call.query[param])


def _part_span(call: Call, info) -> tuple[int, int, int] | None:
    """``?partNumber=N``: (start, end, parts count) of that part; None without the parameter."""
    if "partNumber" not in call.query:
        return None
    if call.headers.get("range"):
        raise errors.InvalidRequest("Cannot specify both Range header and partNumber query parameter")
    number = parse_part_number(call.query["partNumber"])
    sizes = info.part_sizes or (info.size,)
    if number > len(sizes):
        raise errors.InvalidPartNumber("The requested partnumber is not satisfiable")
    start = sum(sizes[:number - 1])
    return start, start + sizes[number - 1] - 1, len(sizes)


async def put_object(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, WRITE)
    condition = write_condition(call.headers)
    size = call.object_size()
    md5 = call.content_md5()
    stream = call.upload_stream(size)
    info = await run(call.store.put_object, bucket, key, stream, call.region, content_type=content_type(call.headers),
                     metadata=user_metadata(call.headers), content_md5=md5, size=size,
                     headers=stored_headers(call.headers), condition=condition)
    return Response(b"", 200, {"etag": quote_etag(info.etag)})


async def head_object(call: Call, bucket: str, key: str) -> Response:
    return await get_object(call, bucket, key, head=True)


async def get_object(call: Call, bucket: str, key: str, *, head: bool = False) -> Response:
    await call.bucket(bucket, READ)
    start = end = parts_count = None
    if head or call.headers.get("range") or "partNumber" in call.query:
        info = await run(call.store.head_object, bucket, key, call.region)
        check_preconditions(call.headers, info.etag, info.last_modified)
        span = _part_span(call, info)
        if span is not None:
            start, end, parts_count = span
            if info.part_sizes is None:  # a simple object is its own part 1: the whole of it, 200
                start = end = None
        else:
            found = parse_range(call.headers.get("range"), info.size)
            if found is not None:
                start, end = found
    if head:
        headers = object_headers(info, call.request_id)
        headers["content-length"] = str(info.size if start is None else end - start + 1)
        status = 200
        if start is not None:
            headers["content-range"] = f"bytes {start}-{end}/{info.size}"
            status = 206
        if parts_count is not None and info.part_sizes is not None:
            headers["x-amz-mp-parts-count"] = str(parts_count)
        _apply_overrides(call, headers)
        return Response(b"", status, headers)
    info, chunks = await run(call.store.get_object, bucket, key, call.region, start=start, end=end)
    try:
        check_preconditions(call.headers, info.etag, info.last_modified)
    except BaseException:
        close = getattr(chunks, "close", None)
        if close is not None:
            await to_thread.run_sync(close)
        raise
    headers = object_headers(info, call.request_id)
    if parts_count is not None and info.part_sizes is not None:
        headers["x-amz-mp-parts-count"] = str(parts_count)
    _apply_overrides(call, headers)
    if start is None:
        response = ObjectStreamResponse(chunks, 200, headers, info.size)
    else:
        headers["content-range"] = f"bytes {start}-{end}/{info.size}"
        response = ObjectStreamResponse(chunks, 206, headers, end - start + 1)
    await response.prefetch()
    return response


async def copy_object(call: Call, bucket: str, key: str) -> Response:
    src_bucket, src_key = parse_copy_source(call.headers["x-amz-copy-source"])
    await call.bucket(src_bucket, READ)
    await call.bucket(bucket, WRITE)
    directive = call.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument("Unknown metadata directive.")
    metadata = type_ = headers = None
    if directive == "REPLACE":
        metadata = user_metadata(call.headers)
        type_ = content_type(call.headers)
        headers = stored_headers(call.headers)
    elif (src_bucket, src_key) == (bucket, key):
        raise errors.InvalidRequest("This copy request is illegal because it is trying to copy an object to "
                                    "itself without changing the object's metadata, storage class, website "
                                    "redirect location or encryption attributes.")

    def source_check(source) -> None:
        check_copy_source(call.headers, source.etag, source.last_modified)

    info = await run(call.store.copy_object, src_bucket, src_key, bucket, key, call.region, metadata=metadata,
                     content_type=type_, headers=headers, source_check=source_check)
    root = xml_root("CopyObjectResult")
    add(root, "LastModified", iso_date(info.last_modified))
    add(root, "ETag", quote_etag(info.etag))
    return xml_response(root, call.request_id)


async def delete_object(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, WRITE)
    try:
        await run(call.store.delete_object, bucket, key)
    except errors.NoSuchKey:
        pass  # S3 answers 204 for a key that is not there
    return Response(b"", 204)


async def delete_objects(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, WRITE)
    document = await call.xml_body("Delete")
    quiet = (child_text(document, "Quiet") or "").strip().lower() == "true"
    keys = [child_text(entry, "Key") for entry in children(document, "Object")]
    if not keys or len(keys) > MAX_DELETE_KEYS or any(k is None or k == "" for k in keys):
        raise errors.MalformedXML("Delete needs between 1 and 1000 <Object><Key> entries")

    def delete_all() -> list[tuple[str, S3Error | None]]:
        outcome = []
        for name in keys:
            try:
                check_key(name)
                call.store.delete_object(bucket, name)
                outcome.append((name, None))
            except errors.NoSuchKey:
                outcome.append((name, None))  # deleting what is not there succeeds in S3
            except S3Error as e:
                outcome.append((name, e))
        return outcome

    root = xml_root("DeleteResult")
    for name, error in await to_thread.run_sync(delete_all):
        if error is None:
            if not quiet:
                add(add(root, "Deleted"), "Key", name)
        else:
            entry = add(root, "Error")
            add(entry, "Key", name)
            add(entry, "Code", error.code)
            add(entry, "Message", error.message)
    return xml_response(root, call.request_id)
