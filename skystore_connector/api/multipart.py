"""Multipart handlers: create, UploadPart, UploadPartCopy (range and copy-source conditions checked),
CompleteMultipartUpload (conditional; a retry of a completed upload answers its ETag), abort,
ListParts and ListMultipartUploads."""

from __future__ import annotations

from urllib.parse import quote

from anyio import to_thread
from starlette.responses import Response

from .. import errors
from ..access import READ, WRITE
from .call import Call, run
from .request import (MAX_PART_NUMBER, check_copy_source, content_type, parse_copy_range, parse_copy_source,
                      parse_int, parse_part_number, stored_headers, user_metadata, write_condition)
from .s3xml import add, child_text, children, iso_date, quote_etag, xml_response, xml_root


async def create_upload(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, WRITE)
    upload_id = await run(call.store.create_multipart_upload, bucket, key, call.region,
                          content_type=content_type(call.headers), metadata=user_metadata(call.headers),
                          headers=stored_headers(call.headers))
    root = xml_root("InitiateMultipartUploadResult")
    add(root, "Bucket", bucket)
    add(root, "Key", key)
    add(root, "UploadId", upload_id)
    return xml_response(root, call.request_id)


def _upload_id(call: Call) -> str:
    upload_id = call.query.get("uploadId")
    if not upload_id:
        raise errors.InvalidArgument("uploadId is required with partNumber")
    return upload_id


async def upload_part(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, WRITE)
    number = parse_part_number(call.query.get("partNumber"))
    upload_id = _upload_id(call)
    size = call.object_size()
    md5 = call.content_md5()
    part = await run(call.store.upload_part, bucket, key, upload_id, number, call.upload_stream(size),
                     content_md5=md5, size=size)
    return Response(b"", 200, {"etag": quote_etag(part.etag)})


async def upload_part_copy(call: Call, bucket: str, key: str) -> Response:
    number = parse_part_number(call.query.get("partNumber"))
    upload_id = _upload_id(call)
    src_bucket, src_key = parse_copy_source(call.headers["x-amz-copy-source"])
    await call.bucket(src_bucket, READ)
    await call.bucket(bucket, WRITE)
    store, region = call.store, call.region
    source = await run(store.head_object, src_bucket, src_key, region)
    copy_range = call.headers.get("x-amz-copy-source-range")
    start, end = parse_copy_range(copy_range, source.size) if copy_range else (0, source.size - 1)

    def copy_part():
        if source.size == 0:
            check_copy_source(call.headers, source.etag, source.last_modified)
            return store.upload_part(bucket, key, upload_id, number, b"", content_md5=None, size=0)
        info, chunks = store.get_object(src_bucket, src_key, region, start=start, end=end)
        try:
            # the conditions are checked on the version actually read, and the range against its size
            check_copy_source(call.headers, info.etag, info.last_modified)
            if end >= info.size:
                raise errors.InvalidRange("The requested range is not satisfiable")
            return store.upload_part(bucket, key, upload_id, number, chunks, content_md5=None, size=end - start + 1)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    part = await to_thread.run_sync(copy_part)
    root = xml_root("CopyPartResult")
    add(root, "LastModified", iso_date(part.last_modified))
    add(root, "ETag", quote_etag(part.etag))
    return xml_response(root, call.request_id)


async def complete_upload(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, WRITE)
    upload_id = call.query["uploadId"]
    condition = write_condition(call.headers)
    document = await call.xml_body("CompleteMultipartUpload")
    parts = []
    for entry in children(document, "Part"):
        number_text, etag = child_text(entry, "PartNumber"), child_text(entry, "ETag")
        if number_text is None or etag is None:
            raise errors.MalformedXML("every <Part> needs a <PartNumber> and an <ETag>")
        try:
            number = int(number_text.strip())
        except ValueError:
            raise errors.MalformedXML("PartNumber must be an integer") from None
        if not 1 <= number <= MAX_PART_NUMBER:
            raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
        parts.append((number, etag.strip().strip('"')))
    if not parts:
        raise errors.MalformedXML("The XML you provided was not well-formed or did not validate against our "
                                  "published schema: no parts.")
    if any(b[0] <= a[0] for a, b in zip(parts, parts[1:])):
        raise errors.InvalidPartOrder("The list of parts was not in ascending order. Parts must be ordered "
                                      "by part number.")
    info = await run(call.store.complete_multipart_upload, bucket, key, upload_id, parts, condition=condition)
    root = xml_root("CompleteMultipartUploadResult")
    host = call.headers.get("host", "localhost")
    add(root, "Location", f"http://{host}/{bucket}/{quote(key)}")
    add(root, "Bucket", bucket)
    add(root, "Key", key)
    add(root, "ETag", quote_etag(info.etag))
    return xml_response(root, call.request_id)


async def abort_upload(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, WRITE)
    await run(call.store.abort_multipart_upload, bucket, key, call.query["uploadId"])
    return Response(b"", 204)


async def list_parts(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, READ)
    upload_id = call.query["uploadId"]
    max_parts = parse_int(call.query.get("max-parts"), "max-parts", 1000, high=1000)
    marker = parse_int(call.query.get("part-number-marker"), "part-number-marker", 0)
    parts = await run(call.store.list_parts, bucket, key, upload_id)
    remaining = [p for p in sorted(parts, key=lambda p: p.number) if p.number > marker]
    page, truncated = remaining[:max_parts], len(remaining) > max_parts
    root = xml_root("ListPartsResult")
    add(root, "Bucket", bucket)
    add(root, "Key", key)
    add(root, "UploadId", upload_id)
    call.owner(root, "Initiator")
    call.owner(root)
    add(root, "StorageClass", "STANDARD")
    add(root, "PartNumberMarker", marker)
    add(root, "NextPartNumberMarker", page[-1].number if page else marker)
    add(root, "MaxParts", max_parts)
    add(root, "IsTruncated", truncated)
    for part in page:
        entry = add(root, "Part")
        add(entry, "PartNumber", part.number)
        add(entry, "LastModified", iso_date(part.last_modified))
        add(entry, "ETag", quote_etag(part.etag))
        add(entry, "Size", part.size)
    return xml_response(root, call.request_id)


async def list_uploads(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, READ)
    q = call.query
    prefix = q.get("prefix", "")
    max_uploads = parse_int(q.get("max-uploads"), "max-uploads", 1000, high=1000)
    key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
    uploads = await run(call.store.list_multipart_uploads, bucket, prefix=prefix)
    uploads = sorted(uploads, key=lambda u: (u.key, u.initiated, u.upload_id))
    if key_marker:
        if id_marker:
            position = next((i + 1 for i, u in enumerate(uploads)
                             if u.key == key_marker and u.upload_id == id_marker), None)
            uploads = uploads[position:] if position is not None else [u for u in uploads if u.key > key_marker]
        else:
            uploads = [u for u in uploads if u.key > key_marker]
    page, truncated = uploads[:max_uploads], len(uploads) > max_uploads
    root = xml_root("ListMultipartUploadsResult")
    add(root, "Bucket", bucket)
    add(root, "KeyMarker", key_marker)
    add(root, "UploadIdMarker", id_marker)
    add(root, "NextKeyMarker", page[-1].key if truncated else "")
    add(root, "NextUploadIdMarker", page[-1].upload_id if truncated else "")
    add(root, "Prefix", prefix)
    add(root, "MaxUploads", max_uploads)
    add(root, "IsTruncated", truncated)
    for upload in page:
        entry = add(root, "Upload")
        add(entry, "Key", upload.key)
        add(entry, "UploadId", upload.upload_id)
        call.owner(entry, "Initiator")
        call.owner(entry)
        add(entry, "StorageClass", "STANDARD")
        add(entry, "Initiated", iso_date(upload.initiated))
    return xml_response(root, call.request_id)
