"""SkyStore: the S3 operations over metadata (``metadata.py``), region backends (``regions.py``) and a placement
policy (``policy.py``).

Writes. A completed write puts the base copy in the writer's region (plus the policy's ``initial_regions``).
Rows are recorded pending before bytes are written, each copy has its own blob path, and the version becomes
the key's current one in a single transaction at the end: readers never see a partial object, concurrent
writers never share a file, and the last write to *commit* wins. The replaced version's blobs are deleted at
once (or by the sweeper if a region is down).

Reads. A read in a region holding a live copy is served there; a hit on a replica extends its expiry to
``now + policy.ttl(region, cheapest other source)``. Otherwise the read is served from the ready copy with the
cheapest egress into the reader's region, skipping regions that are down, and when ``policy.ttl`` is positive
a replica is left in the reader's region: a whole-object read writes it while streaming (tee) and publishes it
only once complete; a ranged read (Parquet footers, Spark splits) is answered from the source at once and the
whole object is replicated in the background, so the next reads are local. Expired replicas are invisible
to reads even before the sweeper removes them.

The sweeper (``sweep``, or a thread from ``start_sweeper``) evicts expired replicas, deletes the blobs of
replaced or abandoned versions, retires writes and parts left pending by a crash for longer than
``pending_grace``, aborts multipart uploads idle past ``multipart_expiry`` and removes blobs no row refers to.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import re
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Union

from . import errors
from .config import Config, ConfigError
from .metadata import PENDING, BucketInfo, Copy, Metadata, Part, Version, new_id
from .policy import Policy, make_policy
from .pricing import Prices
from .region_names import both_spellings
from .regions import BlobNotFound, BlobWriter, Region, RegionUnavailable, open_region, read_chunks

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
MAX_PART_NUMBER = 10_000
LIST_BATCH = 1000
SWEEP_BATCH = 1000
DEFAULT_CONTENT_TYPE = "binary/octet-stream"

Body = Union[bytes, bytearray, memoryview, BinaryIO, Iterable[bytes]]


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str  # hex, unquoted; multipart: "<hex>-<parts>"
    last_modified: float
    content_type: str
    metadata: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)  # stored Cache-Control, Content-Encoding, ...
    part_sizes: tuple[int, ...] | None = None  # a multipart object's part sizes, in order


@dataclass(frozen=True)
class WriteCondition:
    """A write's If-Match / If-None-Match: checked before any byte is written and again, under the commit's
    lock, when the new version becomes current, so two conditional writers cannot both succeed."""

    if_match: str | None = None  # the current version's etag must be this ("*": some version must exist)
    if_none_match: bool = False  # no current version may exist (If-None-Match: *)

    def check(self, current_etag: str | None, key: str) -> None:
        if self.if_none_match and current_etag is not None:
            raise errors.PreconditionFailed("At least one of the pre-conditions you specified did not hold",
                                            resource="If-None-Match")
        if self.if_match is None:
            return
        if current_etag is None:
            raise errors.NoSuchKey("The specified key does not exist.", resource=key)
        wanted = {tag.strip().strip('"').lower() for tag in self.if_match.split(",")}
        if "*" not in wanted and current_etag.lower() not in wanted:
            raise errors.PreconditionFailed("At least one of the pre-conditions you specified did not hold",
                                            resource="If-Match")


@dataclass(frozen=True)
class ListResult:
    objects: list[ObjectInfo]
    common_prefixes: list[str]
    is_truncated: bool
    next_marker: str | None


@dataclass(frozen=True)
class PartInfo:
    number: int
    etag: str
    size: int
    last_modified: float


@dataclass(frozen=True)
class UploadInfo:
    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True)
class CopyInfo:
    region: str
    state: str
    is_base: bool
    expires_at: float | None


class _Superseded(Exception):
    """The version a read picked was replaced while it opened the blob; look it up again."""


class SkyStore:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time, policy: Policy | None = None,
                 prices: Prices | None = None):
        self.config = config
        self.clock = clock
        if prices is None:
            prices = Prices.load(config.prices_dir) if config.prices_dir else Prices.default()
        self.prices = prices
        self._clouds = config.clouds
        for name, cloud in self._clouds.items():
            try:
                prices.resolve(cloud)
            except LookupError as e:
                raise ConfigError(f"region {name}: {e}") from None
        self.policy = policy or make_policy(config.policy, prices, self._clouds)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.regions: dict[str, Region] = {name: open_region(rc) for name, rc in config.regions.items()}
        self.meta = Metadata(config.metadata_url)
        self._replicator = ThreadPoolExecutor(max_workers=2, thread_name_prefix="skystore-replicate")
        self._replications: dict[tuple[int, str], Future] = {}
        self._replications_lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stop_sweeper = threading.Event()
        self._sweep_lock = threading.Lock()
        self._next_orphan_scan = -math.inf

    @property
    def region_names(self) -> list[str]:
        return list(self.regions)

    def close(self) -> None:
        self.stop_sweeper()
        self._replicator.shutdown(wait=True)
        self.meta.close()

    def __enter__(self) -> "SkyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- buckets ----------------------------------------------------------------------------------------

    def create_bucket(self, name: str, region: str, owner: str | None = None) -> BucketInfo:
        """A new bucket owned by the access key ``owner``; 409 BucketAlreadyOwnedByYou when ``owner`` has it
        already, BucketAlreadyExists when another key does."""
        _check_bucket_name(name)
        self._check_region(region)
        try:
            return self.meta.create_bucket(name, region, self.clock(), owner)
        except errors.BucketAlreadyOwnedByYou:
            existing = self.meta.bucket(name)
            if existing is not None and self.owner_of(existing) != self.owner_of_key(owner):
                raise errors.BucketAlreadyExists("The requested bucket name is not available. Select a "
                                                 "different name and try again.", resource=name) from None
            raise

    def owner_of(self, bucket: BucketInfo) -> str:
        """The access key a bucket belongs to: its creator while that key is configured; otherwise (made
        before buckets had owners, or its key was removed) the first configured key, the operator's."""
        return self.owner_of_key(bucket.owner)

    def owner_of_key(self, key: str | None) -> str:
        keys = self.config.access_keys
        return key if key in keys else next(iter(keys))

    def set_bucket_cors(self, name: str, rules: list | None) -> None:
        self.meta.set_cors(name, rules)

    def delete_bucket(self, name: str) -> None:
        self._delete_parts(self.meta.delete_bucket(name))

    def head_bucket(self, name: str) -> BucketInfo:
        row = self.meta.bucket(name)
        if row is None:
            raise errors.NoSuchBucket(f"bucket {name} does not exist", resource=name)
        return row

    def list_buckets(self) -> list[BucketInfo]:
        return self.meta.buckets()

    # ---- objects ----------------------------------------------------------------------------------------

    def put_object(self, bucket: str, key: str, body: Body, region: str, *,
                   content_type: str = DEFAULT_CONTENT_TYPE, metadata: dict[str, str] | None = None,
                   content_md5: str | None = None, size: int | None = None, headers: dict[str, str] | None = None,
                   condition: WriteCondition | None = None) -> ObjectInfo:
        """Write ``body`` as the key's new version. ``headers`` are stored HTTP headers (Cache-Control,
        Content-Encoding, ...) returned with every read; ``condition`` refuses the write (412) unless it holds."""
        _check_key(key)
        self._check_region(region)
        expected_md5 = _parse_content_md5(content_md5)
        limit = self.config.max_object_size
        if size is not None and size > limit:
            raise errors.EntityTooLarge(f"{size} bytes is over the {limit} byte limit", resource=key)

        def write(writer: BlobWriter) -> tuple[int, str]:
            return _write_body(writer, body, size, expected_md5, limit)

        return self._store(bucket, key, region, content_type, metadata or {}, write, headers=headers,
                           condition=condition)

    def get_object(self, bucket: str, key: str, region: str, *, start: int | None = None,
                   end: int | None = None) -> tuple[ObjectInfo, Iterator[bytes]]:
        """The object and its bytes ``start``..``end`` (inclusive; ``end`` clipped to the last byte)."""
        self._check_region(region)
        return self._read(bucket, key, region, start, end, client_read=True)

    def head_object(self, bucket: str, key: str, region: str) -> ObjectInfo:
        self._check_region(region)
        version, _ = self._current(bucket, key)
        return _object_info(version)

    def delete_object(self, bucket: str, key: str) -> None:
        self._delete_copies(self.meta.delete_key(bucket, key))

    def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, region: str, *,
                    metadata: dict[str, str] | None = None, content_type: str | None = None,
                    headers: dict[str, str] | None = None,
                    source_check: Callable[[ObjectInfo], None] | None = None) -> ObjectInfo:
        """Copy to a new version of ``dst_key`` whose base copy is in ``region``; metadata, content type and
        stored headers default to the source's. ``source_check`` sees the source version that will be copied
        (x-amz-copy-source-if-*) and raises to refuse. Not a client read: no replica is left and the policy
        is not told."""
        _check_key(dst_key)
        self._check_region(region)
        if (src_bucket, src_key) == (dst_bucket, dst_key) and metadata is None and content_type is None:
            raise errors.InvalidRequest("copying an object onto itself must change its metadata", resource=dst_key)
        self.head_bucket(dst_bucket)
        source, stream = self._read(src_bucket, src_key, region, None, None, client_read=False)
        if source_check is not None:
            try:
                source_check(source)
            except BaseException:
                _close(stream)
                raise

        def write(writer: BlobWriter) -> tuple[int, str]:
            return _write_body(writer, stream, None, None, math.inf)

        return self._store(dst_bucket, dst_key, region, content_type or source.content_type,
                           source.metadata if metadata is None else metadata, write,
                           headers=source.headers if headers is None else headers)

    def list_objects(self, bucket: str, *, prefix: str = "", delimiter: str | None = None,
                     marker: str | None = None, max_keys: int = 1000) -> ListResult:
        """Keys in UTF-8 byte order after ``marker``; keys sharing ``prefix`` + text + ``delimiter`` are rolled
        up into one common prefix, which counts towards ``max_keys`` like a key."""
        if max_keys < 0:
            raise errors.InvalidArgument("max-keys must be >= 0")
        self.head_bucket(bucket)
        batch = max(1, min(max_keys + 1, LIST_BATCH))
        taken = list(islice(self._entries(bucket, prefix, delimiter or None, marker, batch), max_keys + 1))
        truncated = len(taken) > max_keys
        taken = taken[:max_keys]
        found = [e for e in taken if isinstance(e, ObjectInfo)]
        prefixes = [e for e in taken if isinstance(e, str)]
        next_marker = None
        if truncated and taken:
            last = taken[-1]
            next_marker = last if isinstance(last, str) else last.key
        return ListResult(found, prefixes, truncated, next_marker)

    def _entries(self, bucket: str, prefix: str, delimiter: str | None, marker: str | None,
                 batch: int) -> Iterator[ObjectInfo | str]:
        upper = _successor(prefix)
        lower, inclusive = (marker, False) if marker is not None and marker >= prefix else (prefix, True)
        while True:
            versions = self.meta.list_versions(bucket, lower=lower, inclusive=inclusive, upper=upper, limit=batch)
            for version in versions:
                lower, inclusive = version.key, False
                cut = version.key.find(delimiter, len(prefix)) if delimiter else -1
                if cut < 0:
                    yield _object_info(version)
                    continue
                group = version.key[:cut + len(delimiter)]
                if marker is None or group > marker:
                    yield group
                skip_to = _successor(group)  # re-query past every key of the group
                if skip_to is None:
                    return
                lower, inclusive = skip_to, True
                break
            else:
                if len(versions) < batch:
                    return

    # ---- multipart uploads ------------------------------------------------------------------------------

    def create_multipart_upload(self, bucket: str, key: str, region: str, *,
                                content_type: str = DEFAULT_CONTENT_TYPE,
                                metadata: dict[str, str] | None = None,
                                headers: dict[str, str] | None = None) -> str:
        _check_key(key)
        self._check_region(region)
        upload = self.meta.create_upload(bucket, key, region, content_type, metadata or {}, self.clock(),
                                         headers)
        return upload.upload_id

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int, body: Body, *,
                    content_md5: str | None = None, size: int | None = None) -> PartInfo:
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise errors.InvalidArgument(f"part number must be 1..{MAX_PART_NUMBER}, got {part_number}")
        expected_md5 = _parse_content_md5(content_md5)
        limit = self.config.max_object_size
        if size is not None and size > limit:
            raise errors.EntityTooLarge(f"a part of {size} bytes is over the {limit} byte limit", resource=key)
        upload = self.meta.upload(bucket, key, upload_id)
        region = self.regions[upload.region]
        path = f"_multipart/{upload_id}.{part_number}.{secrets.token_hex(4)}"
        part = self.meta.begin_part(upload, part_number, path, self.clock())
        try:
            with _region_errors():
                writer = region.writer(path)
                try:
                    written, md5 = _write_body(writer, body, size, expected_md5, limit)
                    writer.commit()
                except BaseException:
                    writer.abort()
                    raise
            ready, replaced = self.meta.finish_part(part, md5, written, self.clock())
        except BaseException:
            self._delete_parts([part])
            raise
        self._delete_parts(replaced)
        return PartInfo(ready.number, ready.etag, ready.size, ready.last_modified)

    def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                  parts: list[tuple[int, str]], *,
                                  condition: WriteCondition | None = None) -> ObjectInfo:
        """Join the listed parts (ascending numbers, etags as returned by ``upload_part``) into the object.
        ``max_object_size`` limits single puts and parts, not the joined object (as S3: 5 GiB vs 5 TiB).
        Completing an upload that already completed answers the etag it produced (an SDK's retry after a lost
        response must succeed), with the object's current details when it is still that version."""
        try:
            upload = self.meta.upload(bucket, key, upload_id)
        except errors.NoSuchUpload:
            etag = self.meta.completed_upload(bucket, key, upload_id)
            if etag is None:
                raise
            current = self.meta.current(bucket, key)
            if current is not None and current[0].etag == etag:
                return _object_info(current[0])
            return ObjectInfo(bucket, key, 0, etag, self.clock(), DEFAULT_CONTENT_TYPE, {})
        if not parts:
            raise errors.MalformedXML("a multipart upload needs at least one part")
        ready = {p.number: p for p in self.meta.ready_parts(upload_id)}
        chosen: list[Part] = []
        for number, etag in parts:
            if chosen and number <= chosen[-1].number:
                raise errors.InvalidPartOrder("parts must be listed in ascending order of part number")
            part = ready.get(number)
            if part is None or part.etag != etag.strip().strip('"').lower():
                raise errors.InvalidPart(f"part {number} was not uploaded or its etag does not match",
                                         resource=key)
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < self.config.min_part_size:
                raise errors.EntityTooSmall(f"part {part.number} is {part.size} bytes; every part but the last "
                                            f"must be at least {self.config.min_part_size}", resource=key)
        joined_md5 = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen)).hexdigest()
        etag = f"{joined_md5}-{len(chosen)}"
        region = self.regions[upload.region]

        def write(writer: BlobWriter) -> tuple[int, str]:
            for part in chosen:
                try:
                    for chunk in region.read(part.path):
                        writer.write(chunk)
                except BlobNotFound as e:
                    raise errors.InternalError(f"part {part.number} of upload {upload_id} is lost: {e}") from e
            return sum(p.size for p in chosen), etag

        return self._store(bucket, key, upload.region, upload.content_type, upload.metadata, write,
                           upload_id=upload_id, headers=upload.headers, condition=condition,
                           part_sizes=[p.size for p in chosen])

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self.meta.upload(bucket, key, upload_id)
        self._delete_parts(self.meta.delete_upload(upload_id))

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        self.meta.upload(bucket, key, upload_id)
        return [PartInfo(p.number, p.etag, p.size, p.last_modified) for p in self.meta.ready_parts(upload_id)]

    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> list[UploadInfo]:
        return [UploadInfo(u.key, u.upload_id, u.initiated) for u in self.meta.uploads(bucket, prefix)]

    # ---- placement --------------------------------------------------------------------------------------

    def copies(self, bucket: str, key: str) -> list[CopyInfo]:
        """Copies of the key's current version: ready ones not expired, and pending ones (being written).
        Empty for a missing key; NoSuchBucket for a missing bucket."""
        found = self.meta.current(bucket, key)
        if found is None:
            return []
        now = self.clock()
        return [CopyInfo(c.region, c.state, c.is_base, c.expires_at) for c in found[1]
                if c.state == PENDING or c.live(now)]

    def wait_for_replication(self, timeout: float | None = None) -> None:
        """Block until background replications (started by ranged reads) are done."""
        with self._replications_lock:
            running = list(self._replications.values())
        wait(running, timeout=timeout)

    # ---- the write path ---------------------------------------------------------------------------------

    def _store(self, bucket: str, key: str, region: str, content_type: str, metadata: dict[str, str],
               write: Callable[[BlobWriter], tuple[int, str]], upload_id: str | None = None,
               headers: dict[str, str] | None = None, condition: WriteCondition | None = None,
               part_sizes: list[int] | None = None) -> ObjectInfo:
        """Write a new version of ``key``: rows first (pending), then the base blob through ``write`` (which
        returns size and etag), then the policy's extra initial copies, then one commit. A ``condition`` is
        checked first (so a refused write reads no body) and again in the commit's transaction."""
        _check_metadata(metadata)
        _check_metadata(headers or {})
        check = None
        if condition is not None:
            current = self.meta.current(bucket, key)
            condition.check(current[0].etag if current else None, key)

            def check(etag: str | None) -> None:
                condition.check(etag, key)
        now = self.clock()
        targets = self._initial_regions(region)
        version_id = new_id()
        placements = [(r, f"{bucket}/{version_id}.{secrets.token_hex(4)}", r == region) for r in targets]
        version, pending = self.meta.begin_version(bucket, key, version_id, content_type, metadata, placements, now,
                                                   headers)
        base = pending[0]
        try:
            with _region_errors():
                writer = self.regions[region].writer(base.path)
                try:
                    size, etag = write(writer)
                    writer.commit()
                except BaseException:
                    writer.abort()
                    raise
            ready: dict[int, float | None] = {base.id: None}
            for copy in pending[1:]:
                ttl = self.policy.ttl(copy.region, region, now)
                if ttl > 0 and self._copy_blob(base, copy):
                    ready[copy.id] = _expiry(now, ttl)
            version, garbage, parts = self.meta.commit_version(version.id, size=size, etag=etag, ready=ready,
                                                               now=self.clock(), upload_id=upload_id,
                                                               condition=check, part_sizes=part_sizes)
        except BaseException:
            self._delete_copies(self.meta.abandon_version(version.id))
            raise
        self._delete_copies(garbage)
        self._delete_parts(parts)
        return _object_info(version)

    def _initial_regions(self, region: str) -> list[str]:
        chosen = [region]
        for name in self.policy.initial_regions(region, self.region_names):
            if name in self.regions and name not in chosen:
                chosen.append(name)
        return chosen

    def _copy_blob(self, source: Copy, target: Copy) -> bool:
        """Copy a blob between regions; False (logged) when either region fails."""
        try:
            writer = self.regions[target.region].writer(target.path)
        except RegionUnavailable as e:
            log.warning("no copy in %s: %s", target.region, e)
            return False
        try:
            for chunk in self.regions[source.region].read(source.path):
                writer.write(chunk)
            writer.commit()
            return True
        except (RegionUnavailable, BlobNotFound) as e:
            writer.abort()
            log.warning("no copy in %s: %s", target.region, e)
            return False

    # ---- the read path ----------------------------------------------------------------------------------

    def _current(self, bucket: str, key: str) -> tuple[Version, list[Copy]]:
        found = self.meta.current(bucket, key)
        if found is None:
            raise errors.NoSuchKey(f"no object {key} in bucket {bucket}", resource=key)
        return found

    def _read(self, bucket: str, key: str, region: str, start: int | None, end: int | None, *,
              client_read: bool) -> tuple[ObjectInfo, Iterator[bytes]]:
        for _ in range(3):
            try:
                return self._read_version(bucket, key, region, start, end, client_read)
            except _Superseded:
                continue
        raise errors.ServiceUnavailable(f"{key} is being rewritten too often to read; retry", resource=key)

    def _read_version(self, bucket: str, key: str, region: str, start: int | None, end: int | None,
                      client_read: bool) -> tuple[ObjectInfo, Iterator[bytes]]:
        version, copies = self._current(bucket, key)
        offset, length = _byte_range(version.size, start, end)
        now = self.clock()
        if client_read:  # reads weigh by their bytes; reads where the base copy lives never need a replica
            base = next((c.region for c in copies if c.is_base), None)
            self.policy.record_read(region, bucket, key, now, size=version.size, base=base)
        live = [c for c in copies if c.live(now)]
        local = next((c for c in live if c.region == region), None)
        if local is not None:
            stream = self._open(local, offset, length)
            if stream is not None:
                if client_read and not local.is_base:
                    self._extend(local, live, now, version)
                return _object_info(version), stream
        for source in self._sources(live, region):
            stream = self._open(source, offset, length)
            if stream is None:
                continue
            ttl = (self.policy.ttl(region, source.region, now, bucket, key) if client_read and local is None
                   else 0.0)
            if ttl > 0 and self.regions[region].available():
                if length == version.size:
                    stream = self._tee(stream, version, region, _expiry(now, ttl))
                else:
                    self._replicate_later(version, source, region, _expiry(now, ttl))
            return _object_info(version), stream
        current = self.meta.current(bucket, key)
        if current is not None and current[0].id != version.id:
            raise _Superseded()
        raise errors.ServiceUnavailable(f"no region holding {key} can be reached now", resource=key)

    def _sources(self, live: list[Copy], region: str) -> list[Copy]:
        """Other regions' live copies, cheapest egress into ``region`` first (then the base copy)."""
        cloud = self._clouds[region]
        others = [c for c in live if c.region != region]
        return sorted(others, key=lambda c: (self.prices.egress_gb(self._clouds[c.region], cloud),
                                             not c.is_base, c.region))

    def _open(self, copy: Copy, offset: int, length: int) -> Iterator[bytes] | None:
        try:
            return self.regions[copy.region].read(copy.path, offset, length)
        except (RegionUnavailable, BlobNotFound) as e:
            log.warning("failing over: %s", e)
            return None

    def _extend(self, local: Copy, live: list[Copy], now: float, version: Version) -> None:
        """A hit on a replica: keep it until now + ttl(its cheapest re-fetch source), if that is later."""
        sources = self._sources(live, local.region)
        if local.expires_at is None or not sources:  # kept for good already / nothing to re-fetch from
            return
        ttl = self.policy.ttl(local.region, sources[0].region, now, version.bucket, version.key)
        expires_at = _expiry(now, ttl)
        if ttl > 0 and (expires_at is None or expires_at > local.expires_at):
            self.meta.extend_copy(local.id, expires_at, now)

    def _tee(self, stream: Iterator[bytes], version: Version, region: str,
             expires_at: float | None) -> Iterator[bytes]:
        """Pass ``stream`` through while writing it as a replica in ``region``; the replica is published only
        if the stream is read to the end. Starts when the caller starts reading."""
        copy = self.meta.add_copy(version.id, region, f"{version.bucket}/{version.version_id}."
                                                      f"{secrets.token_hex(4)}", self.clock())
        if copy is None:  # a replica is there or under way
            yield from stream
            return
        try:
            writer: BlobWriter | None = self.regions[region].writer(copy.path)
        except RegionUnavailable as e:
            log.warning("no replica in %s: %s", region, e)
            writer = None
        complete = False
        try:
            for chunk in stream:
                if writer is not None:
                    try:
                        writer.write(chunk)
                    except RegionUnavailable as e:
                        log.warning("no replica in %s: %s", region, e)
                        writer.abort()
                        writer = None
                yield chunk
            complete = True
        finally:
            self._settle_replica(copy, writer, complete, expires_at)

    def _settle_replica(self, copy: Copy, writer: BlobWriter | None, complete: bool,
                        expires_at: float | None) -> None:
        if writer is not None and not complete:
            writer.abort()
        elif writer is not None:
            try:
                writer.commit()
                if self.meta.finish_copy(copy.id, expires_at):
                    return
            except RegionUnavailable as e:
                log.warning("no replica in %s: %s", copy.region, e)
        self._delete_copies([copy])

    def _replicate_later(self, version: Version, source: Copy, region: str, expires_at: float | None) -> None:
        """Copy the whole object into ``region`` in the background (once per version and region at a time)."""
        job = (version.id, region)
        with self._replications_lock:
            if job in self._replications:
                return
            try:
                future = self._replicator.submit(self._replicate, version, source, region, expires_at)
            except RuntimeError:  # shutting down
                return
            self._replications[job] = future

        def forget(_: Future) -> None:
            with self._replications_lock:
                self._replications.pop(job, None)

        future.add_done_callback(forget)

    def _replicate(self, version: Version, source: Copy, region: str, expires_at: float | None) -> None:
        stream = self._open(source, 0, version.size)
        if stream is None:
            return
        try:
            for _ in self._tee(stream, version, region, expires_at):
                pass
        except Exception:
            log.exception("background replication of %s/%s into %s failed", version.bucket, version.key, region)

    # ---- garbage ----------------------------------------------------------------------------------------

    def _delete_copies(self, copies: Iterable[Copy]) -> int:
        """Delete blobs, then their rows; a copy in a region that is down stays for the next sweep."""
        deleted = 0
        for copy in copies:
            try:
                self.regions[copy.region].delete(copy.path)
            except (RegionUnavailable, KeyError) as e:
                log.warning("cannot delete copy %s in %s yet: %s", copy.path, copy.region, e)
                continue
            self.meta.drop_copy(copy.id)
            deleted += 1
        return deleted

    def _delete_parts(self, parts: Iterable[Part]) -> int:
        """Delete part blobs and rows. A blob that cannot be deleted now becomes an orphan the sweeper finds
        (part rows often went already, with their upload)."""
        deleted = 0
        for part in parts:
            try:
                self.regions[part.region].delete(part.path)
            except (RegionUnavailable, KeyError) as e:
                log.warning("cannot delete part %s in %s yet: %s", part.path, part.region, e)
            self.meta.drop_part(part.id)
            deleted += 1
        return deleted

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """One pass of garbage collection (see the module docstring); returns what it removed."""
        with self._sweep_lock:
            return self._sweep(self.clock() if now is None else now)

    def _sweep(self, now: float) -> dict[str, int]:
        cutoff = now - self.config.pending_grace
        counts = {"abandoned_writes": self.meta.expire_stale_versions(cutoff)}
        counts["evicted"] = self._drain(lambda: self.meta.expired_copies(now, SWEEP_BATCH))
        counts["garbage_copies"] = self._drain(lambda: self.meta.dead_copies(cutoff, SWEEP_BATCH))
        stale = self.meta.stale_parts(cutoff)
        counts["abandoned_parts"] = self._delete_parts(stale)
        expired_uploads = self.meta.stale_uploads(now - self.config.multipart_expiry)
        for upload in expired_uploads:
            self._delete_parts(self.meta.delete_upload(upload.upload_id))
        counts["expired_uploads"] = len(expired_uploads)
        self.meta.forget_completed_uploads(now - self.config.multipart_expiry)
        counts["orphan_blobs"] = 0
        if now >= self._next_orphan_scan:
            # a scan lists every blob; blobs become collectable only pending_grace after they were left, so
            # scanning a few times per grace period is enough
            self._next_orphan_scan = now + self.config.pending_grace / 4
            counts["orphan_blobs"] = sum(self._collect_orphans(region, cutoff) for region in self.regions.values())
        return counts

    def _drain(self, batch: Callable[[], list[Copy]]) -> int:
        total = 0
        while True:
            copies = batch()
            deleted = self._delete_copies(copies)
            total += deleted
            if deleted < len(copies) or len(copies) < SWEEP_BATCH:  # done, or stuck on a region that is down
                return total

    def _collect_orphans(self, region: Region, cutoff: float) -> int:
        """Blobs (and temporary files) older than ``cutoff`` that no row refers to. Listed *before* the rows
        are read: a row always exists before its blob, so a blob listed here whose row is missing afterwards
        is garbage."""
        try:
            blobs = [(path, mtime) for path, mtime in region.list_blobs() if mtime < cutoff]
            if not blobs:
                return 0
            referenced = self.meta.referenced_paths(region.name)
            removed = 0
            for path, _ in blobs:
                if path not in referenced:
                    region.delete(path)
                    removed += 1
            return removed
        except RegionUnavailable as e:
            log.warning("cannot sweep region %s now: %s", region.name, e)
            return 0

    def start_sweeper(self) -> None:
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        self._stop_sweeper.clear()
        self._sweeper = threading.Thread(target=self._sweep_forever, name="skystore-sweeper", daemon=True)
        self._sweeper.start()

    def stop_sweeper(self) -> None:
        self._stop_sweeper.set()
        if self._sweeper is not None:
            self._sweeper.join()
            self._sweeper = None

    def _sweep_forever(self) -> None:
        while not self._stop_sweeper.wait(self.config.sweep_interval):
            try:
                counts = self.sweep()
                if any(counts.values()):
                    log.info("sweep: %s", counts)
            except Exception:
                log.exception("sweep failed; retrying in %s s", self.config.sweep_interval)

    def _check_region(self, region: str) -> None:
        if region not in self.regions:
            raise errors.InvalidArgument(f"unknown region {region!r} (configured: "
                                         f"{both_spellings(self._clouds.items())})")


# ---- helpers ------------------------------------------------------------------------------------------------

def _object_info(version: Version) -> ObjectInfo:
    return ObjectInfo(version.bucket, version.key, version.size, version.etag, version.last_modified,
                      version.content_type, dict(version.metadata), dict(version.headers), version.part_sizes)


def _close(stream) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def _expiry(now: float, ttl: float) -> float | None:
    return None if math.isinf(ttl) else now + ttl


class _region_errors:
    """Turn a region failure during a write into the 503 a client retries."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        if kind is not None and issubclass(kind, RegionUnavailable):
            raise errors.ServiceUnavailable(str(value)) from value
        return False


def _check_bucket_name(name: str) -> None:
    """S3's rules: 3-63 characters of lowercase letters, digits, dots and dashes, starting and ending with a
    letter or digit, no '..', not an IP address."""
    ok = (re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name or "") is not None and ".." not in name
          and ".-" not in name and "-." not in name and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name) is None)
    if not ok:
        raise errors.InvalidBucketName(f"invalid bucket name {name!r}", resource=name)


def _check_key(key: str) -> None:
    if not key:
        raise errors.InvalidObjectName("the object key is empty")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidObjectName("the object key is not valid UTF-8", resource=key) from None
    if len(encoded) > MAX_KEY_BYTES:
        raise errors.KeyTooLongError(f"the key is {len(encoded)} bytes; at most {MAX_KEY_BYTES}", resource=key)
    if "\x00" in key:
        raise errors.InvalidObjectName("the object key contains NUL", resource=key)
    if ".." in key.split("/"):
        raise errors.InvalidObjectName("the object key contains a '..' path segment", resource=key)


def _check_metadata(metadata: dict[str, Any]) -> None:
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise errors.InvalidArgument(f"user metadata must map strings to strings: {name!r}={value!r}")


def _parse_content_md5(content_md5: str | None) -> bytes | None:
    if content_md5 is None:
        return None
    try:
        digest = base64.b64decode(content_md5, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise errors.InvalidDigest("Content-MD5 is not the base64 of a 16-byte MD5 digest")
    return digest


def _body_chunks(body: Body, size: int | None) -> Iterator[bytes]:
    """The body as chunks, never more than ``size`` bytes read from a file-like (the rest is not ours)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        yield body
    elif hasattr(body, "read"):
        yield from read_chunks(body, size)
    elif isinstance(body, str):
        raise TypeError("the body must be bytes, a binary file or an iterable of bytes, not str")
    else:
        yield from body


def _write_body(writer: BlobWriter, body: Body, size: int | None, expected_md5: bytes | None,
                limit: float) -> tuple[int, str]:
    """Stream ``body`` into ``writer`` checking its length and MD5; returns (size, hex md5)."""
    md5 = hashlib.md5()
    total = 0
    for chunk in _body_chunks(body, size):
        total += len(chunk)
        if total > limit:
            raise errors.EntityTooLarge(f"the body is over the {int(limit)} byte limit")
        if size is not None and total > size:
            raise errors.InvalidRequest(f"the body is longer than its declared size {size}")
        md5.update(chunk)
        writer.write(chunk)
    if size is not None and total < size:
        raise errors.IncompleteBody(f"the body ended after {total} of {size} bytes")
    if expected_md5 is not None and md5.digest() != expected_md5:
        raise errors.BadDigest("the Content-MD5 does not match the body")
    return total, md5.hexdigest()


def _byte_range(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """(offset, length) of the inclusive range ``start``..``end`` in an object of ``size`` bytes."""
    if start is None and end is None:
        return 0, size
    first = 0 if start is None else start
    last = size - 1 if end is None else min(end, size - 1)
    if first < 0 or first >= size or (end is not None and end < first):
        raise errors.InvalidRange(f"range {start}-{end} is not satisfiable for {size} bytes")
    return first, last - first + 1


def _successor(text: str) -> str | None:
    """The smallest string above every string that starts with ``text`` (None: no bound, also for "")."""
    while text:
        code = ord(text[-1]) + 1
        if code == 0xD800:  # surrogates are not characters of a UTF-8 key
            code = 0xE000
        if code <= 0x10FFFF:
            return text[:-1] + chr(code)
        text = text[:-1]
    return None
