"""SkyStore metadata in SQL (SQLAlchemy Core): buckets, object versions, physical copies, multipart uploads.

Tables
    buckets   name, region, created
    objects   one row per logical version of a key: ``version_id`` (names its blobs), size, etag, content type,
              user metadata, state ``pending`` (being written) -> ``committed`` (the key's current version; at
              most one per key) -> ``deleted`` (superseded or deleted; its copies are garbage)
    copies    one row per physical copy of a version in a region: path, state ``pending`` -> ``ready``,
              ``is_base`` (never evicted), ``expires_at`` (None = kept for good)
    uploads   multipart uploads in progress;  parts: their uploaded parts (``pending`` -> ``ready``)

Crash safety comes from the order of operations the store follows: the rows of a write are inserted (pending)
before any byte is written, a version becomes visible only by ``commit_version``, and a copy's row is removed
only after its blob. Rows left pending by a crash are found by age (``expire_stale_versions``,
``dead_copies``, ``stale_parts``) and blobs with no row at all by ``referenced_paths``.

Concurrency: every method is one transaction. On SQLite (WAL, busy timeout) write transactions start with
``BEGIN IMMEDIATE``, so they run one at a time and "the last write of a key to commit wins" is commit order.
On PostgreSQL a write that changes which version of a key is current first locks the bucket's row
(``SELECT ... FOR UPDATE``), which serialises those commits the same way; a new replica's row is added under
that lock too, so it never refers to a version being retired. Recording a part and ending its upload lock the
upload's row, so no part row outlives its upload. Keys compare in the "C" collation there so listings are in
UTF-8 byte order as on SQLite.
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sqlalchemy import (JSON, BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String,
                        Table, and_, create_engine, delete, event, exists, func, inspect, or_, select, text, update)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError

from .errors import BucketAlreadyOwnedByYou, BucketNotEmpty, InternalError, NoSuchBucket, NoSuchUpload

PENDING, COMMITTED, DELETED, READY = "pending", "committed", "deleted", "ready"
SCHEMA_LOCK = 0x5C7_5709E  # PostgreSQL advisory lock key held while creating the tables

KeyString = String(1024).with_variant(String(1024, collation="C"), "postgresql")

schema = MetaData()

buckets = Table(
    "buckets", schema,
    Column("name", String(63), primary_key=True),
    Column("region", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("owner", String(128)),  # the access key that created it; NULL: made before buckets had owners
    Column("cors", JSON),  # the CORS rules (a list of dicts), NULL when none are set
)

objects = Table(
    "objects", schema,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version_id", String(32), nullable=False, unique=True),
    Column("bucket", String(63), nullable=False),
    Column("key", KeyString, nullable=False),
    Column("state", String(10), nullable=False),
    Column("size", BigInteger),
    Column("etag", String(64)),
    Column("content_type", String(255), nullable=False),
    Column("user_metadata", JSON, nullable=False),
    Column("headers", JSON),  # stored HTTP headers (Cache-Control, Content-Encoding, ...), NULL: none
    Column("part_sizes", JSON),  # a multipart object's part sizes in order (GET ?partNumber=N), else NULL
    Column("created", Float, nullable=False),
    Column("last_modified", Float),
    Index("objects_by_key", "bucket", "state", "key"),
    Index("objects_by_state", "state", "created"),
)
# the invariant "one current version per key", enforced by the database as well as by the commit logic
Index("one_committed_version", objects.c.bucket, objects.c.key, unique=True,
      sqlite_where=objects.c.state == COMMITTED, postgresql_where=objects.c.state == COMMITTED)

copies = Table(
    "copies", schema,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("object_id", Integer, ForeignKey("objects.id"), nullable=False),
    Column("region", String(64), nullable=False),
    Column("path", String(1200), nullable=False),
    Column("state", String(10), nullable=False),
    Column("is_base", Boolean, nullable=False),
    Column("expires_at", Float),
    Column("created", Float, nullable=False),
    Index("copies_by_object", "object_id"),
    Index("copies_by_expiry", "state", "expires_at"),
    Index("copies_by_region", "region"),
)

uploads = Table(
    "uploads", schema,
    Column("upload_id", String(32), primary_key=True),
    Column("bucket", String(63), nullable=False),
    Column("key", KeyString, nullable=False),
    Column("region", String(64), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("user_metadata", JSON, nullable=False),
    Column("headers", JSON),
    Column("initiated", Float, nullable=False),
    Index("uploads_by_bucket", "bucket", "key"),
)

parts = Table(
    "parts", schema,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("upload_id", String(32), ForeignKey("uploads.upload_id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("region", String(64), nullable=False),
    Column("path", String(1200), nullable=False),
    Column("state", String(10), nullable=False),
    Column("etag", String(64)),
    Column("size", BigInteger),
    Column("created", Float, nullable=False),
    Column("last_modified", Float),
    Index("parts_by_upload", "upload_id", "number"),
    Index("parts_by_region", "region"),
)

# completed multipart uploads, so that a retried CompleteMultipartUpload answers as the first one did
completed_uploads = Table(
    "completed_uploads", schema,
    Column("upload_id", String(32), primary_key=True),
    Column("bucket", String(63), nullable=False),
    Column("key", KeyString, nullable=False),
    Column("etag", String(64), nullable=False),
    Column("completed", Float, nullable=False),
    Index("completed_uploads_by_time", "completed"),
)


@dataclass(frozen=True)
class BucketInfo:
    """A bucket as the store reports it."""

    name: str
    created: float
    region: str
    owner: str | None = None  # the access key that created it (None: made before buckets had owners)
    cors: list | None = None  # CORS rules as stored (``cors.py``), None when none are set

    @classmethod
    def of(cls, row) -> "BucketInfo":
        m = row._mapping
        return cls(name=m["name"], created=m["created"], region=m["region"], owner=m["owner"], cors=m["cors"])


@dataclass(frozen=True)
class Version:
    id: int
    version_id: str
    bucket: str
    key: str
    state: str
    size: int | None
    etag: str | None
    content_type: str
    metadata: dict
    created: float
    last_modified: float | None
    headers: dict = field(default_factory=dict)  # stored HTTP headers (Cache-Control, Content-Encoding, ...)
    part_sizes: tuple[int, ...] | None = None  # a multipart object's part sizes


@dataclass(frozen=True)
class Copy:
    id: int
    object_id: int
    region: str
    path: str
    state: str
    is_base: bool
    expires_at: float | None
    created: float

    def live(self, now: float) -> bool:
        """Ready and not expired: what reads may use."""
        return self.state == READY and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    region: str
    content_type: str
    metadata: dict
    initiated: float
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    id: int
    upload_id: str
    number: int
    region: str
    path: str
    state: str
    etag: str | None
    size: int | None
    created: float
    last_modified: float | None


def _version(row) -> Version:
    m = row._mapping
    return Version(m["id"], m["version_id"], m["bucket"], m["key"], m["state"], m["size"], m["etag"],
                   m["content_type"], dict(m["user_metadata"] or {}), m["created"], m["last_modified"],
                   dict(m["headers"] or {}), tuple(m["part_sizes"]) if m["part_sizes"] else None)


def _copy(row) -> Copy:
    m = row._mapping
    return Copy(m["id"], m["object_id"], m["region"], m["path"], m["state"], bool(m["is_base"]), m["expires_at"],
                m["created"])


def _upload(row) -> Upload:
    m = row._mapping
    return Upload(m["upload_id"], m["bucket"], m["key"], m["region"], m["content_type"],
                  dict(m["user_metadata"] or {}), m["initiated"], dict(m["headers"] or {}))


def _part(row) -> Part:
    m = row._mapping
    return Part(m["id"], m["upload_id"], m["number"], m["region"], m["path"], m["state"], m["etag"], m["size"],
                m["created"], m["last_modified"])


def new_id() -> str:
    return uuid.uuid4().hex


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and explicit BEGIN (IMMEDIATE for writes)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the driver must not open transactions itself: _begin does
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "busy_timeout=30000", "synchronous=NORMAL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection):
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then writes can fail
        # with "database is locked" without waiting when another writer got in between
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def _add_missing_columns(conn: Connection) -> None:
    """Columns added to the schema since a database was created (all nullable): ALTER TABLE adds them, so
    a gateway upgraded in place keeps its buckets and objects."""
    inspector = inspect(conn)
    for table in schema.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')


class Metadata:
    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # gateways starting together would all try to create the tables and all but one fail; DDL is
                # transactional there, so under this lock the first creates them and the others find them
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            schema.create_all(conn)
            _add_missing_columns(conn)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                yield conn

    @staticmethod
    def _lock_bucket(conn: Connection, bucket: str) -> BucketInfo:
        """The bucket's row, locked for the rest of the transaction (PostgreSQL; SQLite is already serial)."""
        row = conn.execute(select(buckets).where(buckets.c.name == bucket).with_for_update()).first()
        if row is None:
            raise NoSuchBucket(f"bucket {bucket} does not exist", resource=bucket)
        return BucketInfo.of(row)

    @staticmethod
    def _lock_upload(conn: Connection, upload_id: str) -> None:
        """NoSuchUpload unless the upload exists; its row stays locked for the rest of the transaction (on
        PostgreSQL a part being recorded and the upload ending take turns instead of breaking the foreign key)."""
        found = select(uploads.c.upload_id).where(uploads.c.upload_id == upload_id).with_for_update()
        if conn.execute(found).first() is None:
            raise NoSuchUpload(f"upload {upload_id} does not exist (aborted or completed)")

    @staticmethod
    def _bucket_must_exist(conn: Connection, bucket: str) -> None:
        if conn.execute(select(buckets.c.name).where(buckets.c.name == bucket)).first() is None:
            raise NoSuchBucket(f"bucket {bucket} does not exist", resource=bucket)

    # ---- buckets ----------------------------------------------------------------------------------------

    def create_bucket(self, name: str, region: str, now: float, owner: str | None = None) -> BucketInfo:
        exists_already = BucketAlreadyOwnedByYou(f"bucket {name} already exists", resource=name)
        try:
            with self._write() as conn:
                if conn.execute(select(buckets.c.name).where(buckets.c.name == name)).first() is not None:
                    raise exists_already
                conn.execute(buckets.insert().values(name=name, region=region, created=now, owner=owner))
        except IntegrityError:  # PostgreSQL: another gateway inserted it between our check and our insert
            raise exists_already from None
        return BucketInfo(name, now, region, owner)

    def set_cors(self, name: str, rules: list | None) -> None:
        """Replace the bucket's CORS rules (None removes them)."""
        with self._write() as conn:
            self._lock_bucket(conn, name)
            conn.execute(update(buckets).where(buckets.c.name == name).values(cors=rules))

    def bucket(self, name: str) -> BucketInfo | None:
        with self._read() as conn:
            row = conn.execute(select(buckets).where(buckets.c.name == name)).first()
        return BucketInfo.of(row) if row else None

    def buckets(self) -> list[BucketInfo]:
        with self._read() as conn:
            return [BucketInfo.of(row) for row in conn.execute(select(buckets).order_by(buckets.c.name))]

    def delete_bucket(self, name: str) -> list[Part]:
        """Delete an empty bucket; its unfinished multipart uploads go with it (their parts are returned, for
        the caller to delete the blobs)."""
        with self._write() as conn:
            self._lock_bucket(conn, name)
            live = select(objects.c.id).where(objects.c.bucket == name, objects.c.state == COMMITTED).limit(1)
            if conn.execute(live).first() is not None:
                raise BucketNotEmpty(f"bucket {name} is not empty", resource=name)
            upload_ids = select(uploads.c.upload_id).where(uploads.c.bucket == name)
            conn.execute(upload_ids.with_for_update()).all()  # wait for parts being recorded (_lock_upload)
            dropped = [_part(r) for r in conn.execute(select(parts).where(parts.c.upload_id.in_(upload_ids)))]
            conn.execute(delete(parts).where(parts.c.upload_id.in_(upload_ids)))
            conn.execute(delete(uploads).where(uploads.c.bucket == name))
            conn.execute(delete(completed_uploads).where(completed_uploads.c.bucket == name))
            conn.execute(delete(buckets).where(buckets.c.name == name))
        return dropped

    # ---- object versions --------------------------------------------------------------------------------

    def begin_version(self, bucket: str, key: str, version_id: str, content_type: str, metadata: dict,
                      placements: list[tuple[str, str, bool]], now: float,
                      headers: dict | None = None) -> tuple[Version, list[Copy]]:
        """A pending version with a pending copy per (region, path, is_base), recorded before any byte is
        written so that a crash leaves rows the sweeper finds."""
        with self._write() as conn:
            self._bucket_must_exist(conn, bucket)
            object_id = conn.execute(objects.insert().values(
                version_id=version_id, bucket=bucket, key=key, state=PENDING, content_type=content_type,
                user_metadata=metadata, headers=headers or None, created=now)).inserted_primary_key[0]
            made = []
            for region, path, is_base in placements:
                copy_id = conn.execute(copies.insert().values(
                    object_id=object_id, region=region, path=path, state=PENDING, is_base=is_base,
                    created=now)).inserted_primary_key[0]
                made.append(Copy(copy_id, object_id, region, path, PENDING, is_base, None, now))
        version = Version(object_id, version_id, bucket, key, PENDING, None, None, content_type, dict(metadata),
                          now, None, dict(headers or {}))
        return version, made

    def commit_version(self, object_id: int, *, size: int, etag: str, ready: dict[int, float | None],
                       now: float, upload_id: str | None = None, condition=None,
                       part_sizes: list[int] | None = None) -> tuple[Version, list[Copy], list[Part]]:
        """Make a pending version the key's current one. ``ready`` maps the ids of the copies that were written
        to their expiry; its other copies (never written) are dropped. Returns the version, the copies of the
        version it replaced (garbage now) and, when completing ``upload_id``, that upload's parts (whose rows are
        removed here so that completion is atomic). ``condition(etag or None)``, when given, is called with the
        key's current version's etag under the commit's lock and raises to refuse the write (If-Match and
        If-None-Match on PUT hold at the moment the write becomes visible, not only when it started)."""
        abandoned = InternalError("the write was abandoned before it completed (slower than pending_grace?)")
        with self._write() as conn:
            bucket = conn.execute(select(objects.c.bucket).where(objects.c.id == object_id)).scalar()
            if bucket is None:
                raise abandoned
            self._lock_bucket(conn, bucket)
            row = conn.execute(select(objects).where(objects.c.id == object_id)).first()
            if row.state != PENDING:
                raise abandoned
            if condition is not None:
                condition(conn.execute(select(objects.c.etag).where(
                    objects.c.bucket == row.bucket, objects.c.key == row.key, objects.c.state == COMMITTED)).scalar())
            finished_parts: list[Part] = []
            if upload_id is not None:
                self._lock_upload(conn, upload_id)
                finished_parts = [_part(r) for r in conn.execute(select(parts).where(parts.c.upload_id == upload_id))]
                conn.execute(delete(parts).where(parts.c.upload_id == upload_id))
                conn.execute(delete(uploads).where(uploads.c.upload_id == upload_id))
                conn.execute(completed_uploads.insert().values(upload_id=upload_id, bucket=row.bucket, key=row.key,
                                                               etag=etag, completed=now))
            garbage = self._retire_current(conn, row.bucket, row.key)
            done = conn.execute(update(objects).where(objects.c.id == object_id, objects.c.state == PENDING)
                                .values(state=COMMITTED, size=size, etag=etag, last_modified=now,
                                        part_sizes=part_sizes))
            if done.rowcount != 1:  # retired by a sweeper between our read and this update
                raise abandoned
            for copy_id, expires_at in ready.items():
                conn.execute(update(copies).where(copies.c.id == copy_id).values(state=READY, expires_at=expires_at))
            conn.execute(delete(copies).where(copies.c.object_id == object_id, copies.c.id.not_in(list(ready))))
        version = Version(object_id, row.version_id, row.bucket, row.key, COMMITTED, size, etag, row.content_type,
                          dict(row.user_metadata or {}), row.created, now, dict(row.headers or {}),
                          tuple(part_sizes) if part_sizes else None)
        return version, garbage, finished_parts

    @staticmethod
    def _retire_current(conn: Connection, bucket: str, key: str) -> list[Copy]:
        current = select(objects.c.id).where(objects.c.bucket == bucket, objects.c.key == key,
                                             objects.c.state == COMMITTED)
        garbage = [_copy(r) for r in conn.execute(select(copies).where(copies.c.object_id.in_(current)))]
        conn.execute(update(objects).where(objects.c.id.in_(current)).values(state=DELETED))
        return garbage

    def abandon_version(self, object_id: int) -> list[Copy]:
        """Give up a pending write: its copies become garbage (returned) for the caller to delete."""
        with self._write() as conn:
            conn.execute(update(objects).where(objects.c.id == object_id, objects.c.state == PENDING)
                         .values(state=DELETED))
            return [_copy(r) for r in conn.execute(select(copies).where(copies.c.object_id == object_id))]

    def delete_key(self, bucket: str, key: str) -> list[Copy]:
        """Retire the key's current version (if any); returns its copies, now garbage."""
        with self._write() as conn:
            self._lock_bucket(conn, bucket)
            return self._retire_current(conn, bucket, key)

    def current(self, bucket: str, key: str) -> tuple[Version, list[Copy]] | None:
        """The key's committed version and all its copies (callers filter with ``Copy.live``)."""
        with self._read() as conn:
            self._bucket_must_exist(conn, bucket)
            row = conn.execute(select(objects).where(objects.c.bucket == bucket, objects.c.key == key,
                                                     objects.c.state == COMMITTED)).first()
            if row is None:
                return None
            found = [_copy(r) for r in conn.execute(select(copies).where(copies.c.object_id == row.id)
                                                     .order_by(copies.c.id))]
        return _version(row), found

    def list_versions(self, bucket: str, *, lower: str | None, inclusive: bool, upper: str | None,
                      limit: int) -> list[Version]:
        """Committed versions with lower < key (<= when ``inclusive``) and key < upper, in key order."""
        query = select(objects).where(objects.c.bucket == bucket, objects.c.state == COMMITTED)
        if lower is not None:
            query = query.where(objects.c.key >= lower if inclusive else objects.c.key > lower)
        if upper is not None:
            query = query.where(objects.c.key < upper)
        with self._read() as conn:
            self._bucket_must_exist(conn, bucket)
            return [_version(r) for r in conn.execute(query.order_by(objects.c.key).limit(limit))]

    # ---- copies -----------------------------------------------------------------------------------------

    def add_copy(self, object_id: int, region: str, path: str, now: float) -> Copy | None:
        """A pending replica of a committed version in ``region``; None when the version is no longer current
        or the region already has a live or pending copy of it (someone else is replicating)."""
        with self._write() as conn:
            bucket = conn.execute(select(objects.c.bucket).where(objects.c.id == object_id)).scalar()
            if bucket is None:
                return None
            # the state is read under the bucket's lock, which a commit retiring this version holds (PostgreSQL)
            locked = conn.execute(select(buckets.c.name).where(buckets.c.name == bucket).with_for_update()).first()
            state = conn.execute(select(objects.c.state).where(objects.c.id == object_id)).scalar()
            if locked is None or state != COMMITTED:
                return None
            present = select(copies.c.id).where(
                copies.c.object_id == object_id, copies.c.region == region,
                or_(copies.c.state == PENDING, copies.c.expires_at.is_(None), copies.c.expires_at > now))
            if conn.execute(present).first() is not None:
                return None
            copy_id = conn.execute(copies.insert().values(
                object_id=object_id, region=region, path=path, state=PENDING, is_base=False,
                created=now)).inserted_primary_key[0]
        return Copy(copy_id, object_id, region, path, PENDING, False, None, now)

    def finish_copy(self, copy_id: int, expires_at: float | None) -> bool:
        """Mark a written replica ready; False when its version was retired (or the row collected) meanwhile."""
        with self._write() as conn:
            current = exists().where(objects.c.id == copies.c.object_id, objects.c.state == COMMITTED)
            done = conn.execute(update(copies).where(copies.c.id == copy_id, copies.c.state == PENDING, current)
                                .values(state=READY, expires_at=expires_at))
            return done.rowcount == 1

    def extend_copy(self, copy_id: int, expires_at: float | None, now: float) -> None:
        """Push a live replica's expiry out to ``expires_at`` (None = forever); never shortens it, never revives
        an expired copy."""
        alive = and_(copies.c.id == copy_id, copies.c.state == READY, copies.c.expires_at > now)
        later = alive if expires_at is None else and_(alive, copies.c.expires_at < expires_at)
        with self._write() as conn:
            conn.execute(update(copies).where(later).values(expires_at=expires_at))

    def drop_copy(self, copy_id: int) -> None:
        """Forget a copy whose blob is deleted; the version's row goes with its last copy once retired."""
        with self._write() as conn:
            object_id = conn.execute(select(copies.c.object_id).where(copies.c.id == copy_id)).scalar()
            conn.execute(delete(copies).where(copies.c.id == copy_id))
            if object_id is not None:
                no_copies = ~exists().where(copies.c.object_id == objects.c.id)
                conn.execute(delete(objects).where(objects.c.id == object_id, objects.c.state == DELETED, no_copies))

    def expired_copies(self, now: float, limit: int = 1000) -> list[Copy]:
        query = select(copies).where(copies.c.state == READY, copies.c.is_base.is_(False),
                                     copies.c.expires_at <= now).limit(limit)
        with self._read() as conn:
            return [_copy(r) for r in conn.execute(query)]

    def dead_copies(self, pending_before: float, limit: int = 1000) -> list[Copy]:
        """Copies of retired versions, and replicas left pending since before ``pending_before``."""
        retired = select(objects.c.id).where(objects.c.state == DELETED)
        query = select(copies).where(or_(copies.c.object_id.in_(retired),
                                         and_(copies.c.state == PENDING, copies.c.created < pending_before)))
        with self._read() as conn:
            return [_copy(r) for r in conn.execute(query.limit(limit))]

    def expire_stale_versions(self, pending_before: float) -> int:
        """Retire writes pending since before ``pending_before`` (their writer crashed); returns how many."""
        with self._write() as conn:
            return conn.execute(update(objects).where(objects.c.state == PENDING, objects.c.created < pending_before)
                                .values(state=DELETED)).rowcount

    def referenced_paths(self, region: str) -> set[str]:
        """Every blob path a row in ``region`` refers to (copies and parts)."""
        with self._read() as conn:
            paths = set(conn.execute(select(copies.c.path).where(copies.c.region == region)).scalars())
            paths.update(conn.execute(select(parts.c.path).where(parts.c.region == region)).scalars())
        return paths

    # ---- multipart uploads ------------------------------------------------------------------------------

    def create_upload(self, bucket: str, key: str, region: str, content_type: str, metadata: dict,
                      now: float, headers: dict | None = None) -> Upload:
        upload = Upload(new_id(), bucket, key, region, content_type, dict(metadata), now, dict(headers or {}))
        with self._write() as conn:
            self._lock_bucket(conn, bucket)  # so that no upload is added to a bucket being deleted (PostgreSQL)
            conn.execute(uploads.insert().values(
                upload_id=upload.upload_id, bucket=bucket, key=key, region=region, content_type=content_type,
                user_metadata=metadata, headers=headers or None, initiated=now))
        return upload

    def completed_upload(self, bucket: str, key: str, upload_id: str) -> str | None:
        """The etag a completed upload produced (None: not one completed for this bucket and key)."""
        query = select(completed_uploads.c.etag).where(completed_uploads.c.upload_id == upload_id,
                                                       completed_uploads.c.bucket == bucket,
                                                       completed_uploads.c.key == key)
        with self._read() as conn:
            return conn.execute(query).scalar()

    def forget_completed_uploads(self, before: float) -> int:
        with self._write() as conn:
            return conn.execute(delete(completed_uploads).where(completed_uploads.c.completed < before)).rowcount

    def upload(self, bucket: str, key: str, upload_id: str) -> Upload:
        with self._read() as conn:
            self._bucket_must_exist(conn, bucket)
            row = conn.execute(select(uploads).where(uploads.c.upload_id == upload_id, uploads.c.bucket == bucket,
                                                     uploads.c.key == key)).first()
        if row is None:
            raise NoSuchUpload(f"upload {upload_id} does not exist (aborted or completed)", resource=key)
        return _upload(row)

    def uploads(self, bucket: str, prefix: str = "") -> list[Upload]:
        query = select(uploads).where(uploads.c.bucket == bucket).order_by(uploads.c.key, uploads.c.initiated)
        with self._read() as conn:
            self._bucket_must_exist(conn, bucket)
            return [u for u in map(_upload, conn.execute(query)) if u.key.startswith(prefix)]

    def stale_uploads(self, initiated_before: float) -> list[Upload]:
        with self._read() as conn:
            return [_upload(r) for r in conn.execute(select(uploads).where(uploads.c.initiated < initiated_before))]

    def begin_part(self, upload: Upload, number: int, path: str, now: float) -> Part:
        """A pending part, recorded before its bytes are written (in the upload's region)."""
        with self._write() as conn:
            self._lock_upload(conn, upload.upload_id)
            part_id = conn.execute(parts.insert().values(
                upload_id=upload.upload_id, number=number, region=upload.region, path=path, state=PENDING,
                created=now)).inserted_primary_key[0]
        return Part(part_id, upload.upload_id, number, upload.region, path, PENDING, None, None, now, None)

    def finish_part(self, part: Part, etag: str, size: int, now: float) -> tuple[Part, list[Part]]:
        """Mark a written part ready; earlier uploads of the same part number are replaced (returned for the
        caller to delete their blobs). NoSuchUpload when the upload ended meanwhile."""
        with self._write() as conn:
            self._lock_upload(conn, part.upload_id)  # parts of one upload are replaced one at a time
            done = conn.execute(update(parts).where(parts.c.id == part.id, parts.c.state == PENDING)
                                .values(state=READY, etag=etag, size=size, last_modified=now))
            if done.rowcount != 1:
                raise NoSuchUpload(f"upload {part.upload_id} does not exist (aborted or completed)")
            same_number = and_(parts.c.upload_id == part.upload_id, parts.c.number == part.number,
                               parts.c.state == READY, parts.c.id != part.id)
            replaced = [_part(r) for r in conn.execute(select(parts).where(same_number))]
            conn.execute(delete(parts).where(same_number))
        ready = Part(part.id, part.upload_id, part.number, part.region, part.path, READY, etag, size, part.created,
                     now)
        return ready, replaced

    def ready_parts(self, upload_id: str) -> list[Part]:
        query = select(parts).where(parts.c.upload_id == upload_id, parts.c.state == READY).order_by(parts.c.number)
        with self._read() as conn:
            return [_part(r) for r in conn.execute(query)]

    def delete_upload(self, upload_id: str) -> list[Part]:
        """End an upload without an object; returns all its parts (pending too) for blob deletion."""
        with self._write() as conn:
            self._lock_upload(conn, upload_id)
            dropped = [_part(r) for r in conn.execute(select(parts).where(parts.c.upload_id == upload_id))]
            conn.execute(delete(parts).where(parts.c.upload_id == upload_id))
            conn.execute(delete(uploads).where(uploads.c.upload_id == upload_id))
        return dropped

    def stale_parts(self, pending_before: float) -> list[Part]:
        query = select(parts).where(parts.c.state == PENDING, parts.c.created < pending_before)
        with self._read() as conn:
            return [_part(r) for r in conn.execute(query)]

    def drop_part(self, part_id: int) -> None:
        with self._write() as conn:
            conn.execute(delete(parts).where(parts.c.id == part_id))

    def counts(self) -> dict[str, int]:
        """Row counts per table and state (for tests and diagnostics)."""
        out: dict[str, int] = {}
        with self._read() as conn:
            for table in (objects, copies, parts):
                for state, n in conn.execute(select(table.c.state, func.count()).group_by(table.c.state)):
                    out[f"{table.name}.{state}"] = n
            for table in (buckets, uploads):
                out[table.name] = conn.execute(select(func.count()).select_from(table)).scalar()
        return out
