"""SkyStore over real SQLite and real region directories: S3 operations and their errors, placement
(replicate on read, eviction, failover) seen in the region directories, crashes and concurrent writers."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import first_to_start_last_to_commit, kill_when_writing

from skystore_connector import errors
from skystore_connector.config import Config
from skystore_connector.pricing import Prices
from skystore_connector import store as store_module
from skystore_connector.store import SkyStore

EAST, WEST, GCP = "aws-us-east-1", "aws-eu-west-1", "gcp-us-central1"
REGIONS = [EAST, WEST, GCP]
TTL = 100.0
FAR_FUTURE = 10 * 365 * 24 * 3600.0


def open_store(root: Path, clock, policy: str = f"fixed:{TTL:g}", regions=REGIONS, prices=None,
               **settings) -> SkyStore:
    config = Config.local(root, regions=regions, access_keys={"AK": "SK"}, policy=policy, **settings)
    return SkyStore(config, clock=clock, prices=prices)


@pytest.fixture
def store(tmp_path, clock):
    with open_store(tmp_path, clock) as s:
        s.create_bucket("bkt", EAST)
        yield s


def blobs(store: SkyStore, region: str, folder: str = "bkt") -> list[str]:
    """Files in a region's folder, temporary files included."""
    path = Path(store.config.regions[region].url) / folder
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def read(store: SkyStore, key: str, region: str = EAST, bucket: str = "bkt", **range_) -> bytes:
    _, stream = store.get_object(bucket, key, region, **range_)
    return b"".join(stream)


def copy_regions(store: SkyStore, key: str, bucket: str = "bkt") -> dict[str, bool]:
    """Region -> is_base, for ready copies."""
    return {c.region: c.is_base for c in store.copies(bucket, key) if c.state == "ready"}


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# ---- buckets ------------------------------------------------------------------------------------------------

def test_bucket_lifecycle(store, clock):
    info = store.create_bucket("second.bucket-2", WEST)
    assert (info.name, info.region, info.created) == ("second.bucket-2", WEST, clock.now)
    assert store.head_bucket("second.bucket-2") == info
    assert [b.name for b in store.list_buckets()] == ["bkt", "second.bucket-2"]
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        store.create_bucket("bkt", WEST)
    store.put_object("second.bucket-2", "k", b"x", WEST)
    with pytest.raises(errors.BucketNotEmpty):
        store.delete_bucket("second.bucket-2")
    store.delete_object("second.bucket-2", "k")
    store.delete_bucket("second.bucket-2")
    for call in (lambda: store.head_bucket("second.bucket-2"), lambda: store.delete_bucket("second.bucket-2"),
                 lambda: store.put_object("nope", "k", b"x", EAST), lambda: store.get_object("nope", "k", EAST),
                 lambda: store.list_objects("nope"), lambda: store.delete_object("nope", "k")):
        with pytest.raises(errors.NoSuchBucket):
            call()
    with pytest.raises(errors.InvalidArgument):
        store.create_bucket("fine-name", "mars-north-1")


@pytest.mark.parametrize("name", ["ab", "Upper", "a" * 64, "-start", "end-", "dot..dot", "192.168.1.2", "a_b", ""])
def test_invalid_bucket_names(store, name):
    with pytest.raises(errors.InvalidBucketName):
        store.create_bucket(name, EAST)


# ---- objects ------------------------------------------------------------------------------------------------

def test_put_get_head_round_trip(store, clock):
    data = b"hello skystore"
    info = store.put_object("bkt", "dir/hello.txt", data, EAST, content_type="text/plain",
                            metadata={"owner": "ana"}, content_md5=md5_b64(data), size=len(data))
    assert info.etag == hashlib.md5(data).hexdigest()
    assert (info.size, info.content_type, info.metadata, info.last_modified) == \
        (len(data), "text/plain", {"owner": "ana"}, clock.now)
    assert store.head_object("bkt", "dir/hello.txt", WEST) == info
    got, stream = store.get_object("bkt", "dir/hello.txt", EAST)
    assert got == info and b"".join(stream) == data
    assert copy_regions(store, "dir/hello.txt") == {EAST: True}
    assert len(blobs(store, EAST)) == 1 and blobs(store, WEST) == []


def test_put_body_kinds_are_streamed(store):
    chunks = [bytes([i]) * 65536 for i in range(80)]  # 5 MiB as 64 KiB chunks
    big = b"".join(chunks)
    assert store.put_object("bkt", "chunks", iter(chunks), EAST).size == len(big)
    assert read(store, "chunks") == big
    # a file-like is read only up to the declared size: what follows belongs to someone else
    stream = io.BytesIO(b"0123456789 trailing bytes")
    assert store.put_object("bkt", "file", stream, EAST, size=10).etag == hashlib.md5(b"0123456789").hexdigest()
    assert stream.read() == b" trailing bytes"
    assert store.put_object("bkt", "empty", b"", EAST).size == 0
    assert read(store, "empty") == b""
    with pytest.raises(TypeError):
        store.put_object("bkt", "text", "not bytes", EAST)


@pytest.mark.parametrize("key, error", [
    ("", errors.InvalidObjectName), ("a" * 1025, errors.KeyTooLongError), ("é" * 513, errors.KeyTooLongError),
    ("a\x00b", errors.InvalidObjectName), ("../etc/passwd", errors.InvalidObjectName),
    ("a/../b", errors.InvalidObjectName), ("a/..", errors.InvalidObjectName), ("\udc80", errors.InvalidObjectName),
])
def test_bad_keys(store, key, error):
    with pytest.raises(error):
        store.put_object("bkt", key, b"x", EAST)


def test_good_odd_keys(store):
    for key in ("a" * 1024, "..a/b..", "a/./b", " spaced key ", "ünïcødé/😀", "/leading"):
        store.put_object("bkt", key, key.encode(), EAST)
        assert read(store, key) == key.encode()


def assert_nothing_stored(store: SkyStore, key: str) -> None:
    with pytest.raises(errors.NoSuchKey):
        store.head_object("bkt", key, EAST)
    assert all(blobs(store, r) == [] for r in REGIONS)
    counts = store.meta.counts()
    assert not any(n for name, n in counts.items() if name.startswith(("objects", "copies")))


@pytest.mark.parametrize("kwargs, error", [
    ({"content_md5": "not base64!"}, errors.InvalidDigest),
    ({"content_md5": base64.b64encode(b"short").decode()}, errors.InvalidDigest),
    ({"content_md5": md5_b64(b"other")}, errors.BadDigest),
    ({"size": 100}, errors.IncompleteBody),
    ({"size": 3}, errors.InvalidRequest),
])
def test_put_body_errors_store_nothing(store, kwargs, error):
    with pytest.raises(error):
        store.put_object("bkt", "k", iter([b"some ", b"bytes"]), EAST, **kwargs)
    assert_nothing_stored(store, "k")


def test_entity_too_large(tmp_path, clock):
    with open_store(tmp_path, clock, max_object_size=10) as s:
        s.create_bucket("bkt", EAST)
        with pytest.raises(errors.EntityTooLarge):
            s.put_object("bkt", "declared", b"x", EAST, size=11)
        with pytest.raises(errors.EntityTooLarge):
            s.put_object("bkt", "streamed", iter([b"123456", b"789012"]), EAST)
        assert_nothing_stored(s, "streamed")
        assert s.put_object("bkt", "fits", b"1234567890", EAST).size == 10


def test_ranged_reads(store):
    store.put_object("bkt", "k", b"0123456789", EAST)
    assert read(store, "k", start=2, end=4) == b"234"
    assert read(store, "k", start=7) == b"789"
    assert read(store, "k", start=8, end=100) == b"89"
    assert read(store, "k", start=0, end=0) == b"0"
    info, stream = store.get_object("bkt", "k", EAST, start=9)
    assert info.size == 10 and b"".join(stream) == b"9"
    for start, end in ((10, None), (10, 20), (5, 3)):
        with pytest.raises(errors.InvalidRange):
            store.get_object("bkt", "k", EAST, start=start, end=end)
    store.put_object("bkt", "empty", b"", EAST)
    with pytest.raises(errors.InvalidRange):
        store.get_object("bkt", "empty", EAST, start=0)
    with pytest.raises(errors.NoSuchKey):
        store.get_object("bkt", "missing", EAST)


def test_overwrite_and_delete_remove_blobs(store):
    store.put_object("bkt", "k", b"one", EAST)
    store.put_object("bkt", "k", b"two", WEST)
    assert read(store, "k", WEST) == b"two"
    assert blobs(store, EAST) == [] and len(blobs(store, WEST)) == 1
    assert copy_regions(store, "k") == {WEST: True}
    store.delete_object("bkt", "k")
    store.delete_object("bkt", "k")  # idempotent
    store.delete_object("bkt", "never-there")
    assert blobs(store, WEST) == []
    with pytest.raises(errors.NoSuchKey):
        store.head_object("bkt", "k", EAST)
    assert store.copies("bkt", "k") == []


def test_copy_object(store):
    store.put_object("bkt", "src", b"payload", EAST, content_type="text/plain", metadata={"a": "1"})
    store.create_bucket("other", WEST)
    kept = store.copy_object("bkt", "src", "other", "dst", WEST)
    assert (kept.content_type, kept.metadata, kept.etag) == ("text/plain", {"a": "1"},
                                                             hashlib.md5(b"payload").hexdigest())
    assert read(store, "dst", WEST, bucket="other") == b"payload"
    assert copy_regions(store, "dst", bucket="other") == {WEST: True}
    assert copy_regions(store, "src") == {EAST: True}  # not a client read: no replica of the source
    replaced = store.copy_object("bkt", "src", "bkt", "src", EAST, metadata={"b": "2"}, content_type="x/y")
    assert (replaced.metadata, replaced.content_type) == ({"b": "2"}, "x/y")
    assert len(blobs(store, EAST)) == 1  # the old version of src is gone
    with pytest.raises(errors.InvalidRequest):
        store.copy_object("bkt", "src", "bkt", "src", EAST)
    with pytest.raises(errors.NoSuchKey):
        store.copy_object("bkt", "missing", "bkt", "x", EAST)
    with pytest.raises(errors.NoSuchBucket):
        store.copy_object("bkt", "src", "nope", "x", EAST)


# ---- listing ------------------------------------------------------------------------------------------------

def put_keys(store: SkyStore, keys) -> None:
    for key in keys:
        store.put_object("bkt", key, b".", EAST)


def page_through(store: SkyStore, **kwargs) -> list[tuple[list[str], list[str], bool, str | None]]:
    pages, marker = [], None
    while True:
        result = store.list_objects("bkt", marker=marker, **kwargs)
        pages.append(([o.key for o in result.objects], result.common_prefixes, result.is_truncated,
                      result.next_marker))
        if not result.is_truncated:
            return pages
        marker = result.next_marker


def test_list_pagination_with_delimiter(store):
    put_keys(store, ["a/1", "a/2", "a/3/x", "b", "c/x", "c/y", "d", "photos/2024/jan.jpg", "photos/2024/feb.jpg",
                     "photos/2025/mar.jpg", "photos/index.html"])
    assert page_through(store, delimiter="/", max_keys=2) == [
        (["b"], ["a/"], True, "b"),
        (["d"], ["c/"], True, "d"),
        ([], ["photos/"], False, None),
    ]
    assert page_through(store, prefix="photos/", delimiter="/", max_keys=1) == [
        ([], ["photos/2024/"], True, "photos/2024/"),
        ([], ["photos/2025/"], True, "photos/2025/"),
        (["photos/index.html"], [], False, None),
    ]
    flat = page_through(store, prefix="a/", max_keys=2)
    assert [keys for keys, *_ in flat] == [["a/1", "a/2"], ["a/3/x"]]
    # a marker inside a group: the group is not listed again
    result = store.list_objects("bkt", delimiter="/", marker="a/1")
    assert result.common_prefixes == ["c/", "photos/"] and [o.key for o in result.objects] == ["b", "d"]
    assert store.list_objects("bkt", prefix="photos/2024/", delimiter="/").common_prefixes == []
    nothing = store.list_objects("bkt", max_keys=0)
    assert (nothing.objects, nothing.is_truncated) == ([], True)
    assert store.list_objects("bkt", prefix="zzz").objects == []


def keys_after_k(keys: list[str]) -> list[str]:
    return sorted((k for k in keys if k.encode() > b"k"), key=str.encode)


def test_list_orders_by_utf8_bytes(store, monkeypatch):
    keys = ["z", "é", "😀", "Z", "a-", "a", "a/", "\u00ff", "\uffff"]
    put_keys(store, keys)
    listed = [o.key for o in store.list_objects("bkt").objects]
    assert listed == sorted(keys, key=lambda k: k.encode()) == [
        "Z", "a", "a-", "a/", "z", "é", "\u00ff", "\uffff", "😀"]
    assert [o.key for o in store.list_objects("bkt", marker="z").objects] == ["é", "\u00ff", "\uffff", "😀"]
    many = [f"k{i:04d}" for i in range(30)]
    put_keys(store, many)
    monkeypatch.setattr(store_module, "LIST_BATCH", 4)  # many SQL batches for one page
    assert [o.key for o in store.list_objects("bkt", prefix="k", max_keys=5000).objects] == many
    assert [o.key for o in store.list_objects("bkt", marker="k0025").objects] == many[26:] + keys_after_k(keys)
    result = store.list_objects("bkt", delimiter="k")
    assert result.common_prefixes == ["k"] and "k0000" not in [o.key for o in result.objects]


# ---- placement ----------------------------------------------------------------------------------------------

def test_replicate_on_read_and_eviction_seen_in_region_dirs(store, clock):
    data = os.urandom(3 * 1024 * 1024 + 5)
    store.put_object("bkt", "k", data, EAST)
    assert blobs(store, WEST) == []
    assert read(store, "k", WEST) == data
    assert len(blobs(store, WEST)) == 1
    replica = {c.region: c for c in store.copies("bkt", "k")}[WEST]
    assert (replica.state, replica.is_base, replica.expires_at) == ("ready", False, clock.now + TTL)
    assert (Path(store.config.regions[WEST].url) / "bkt" / blobs(store, WEST)[0]).read_bytes() == data
    clock.advance(TTL / 2)
    assert store.sweep()["evicted"] == 0 and len(blobs(store, WEST)) == 1
    clock.advance(TTL)
    assert store.sweep()["evicted"] == 1
    assert blobs(store, WEST) == [] and len(blobs(store, EAST)) == 1
    assert copy_regions(store, "k") == {EAST: True}
    assert read(store, "k", WEST) == data  # replicated again


def test_hit_extends_expiry_but_never_shortens(store, clock):
    store.put_object("bkt", "k", b"data", EAST)
    read(store, "k", WEST)
    first = clock.now + TTL
    clock.advance(60)
    read(store, "k", WEST)
    assert {c.region: c.expires_at for c in store.copies("bkt", "k")}[WEST] == first + 60
    clock.advance(70)  # past the first expiry, within the extended one
    assert store.sweep()["evicted"] == 0
    assert read(store, "k", WEST, start=1, end=2) == b"at"  # a ranged hit extends too
    assert {c.region: c.expires_at for c in store.copies("bkt", "k")}[WEST] == clock.now + TTL
    assert store.copies("bkt", "k")[0].expires_at is None  # the base


def test_expired_copy_is_invisible_before_the_sweep(store, clock):
    store.put_object("bkt", "k", b"data", EAST)
    read(store, "k", WEST)
    clock.advance(TTL + 1)
    assert copy_regions(store, "k") == {EAST: True}
    assert read(store, "k", WEST) == b"data"  # served from the base, a fresh replica written
    assert len(blobs(store, WEST)) == 2
    assert store.sweep()["evicted"] == 1
    assert len(blobs(store, WEST)) == 1 and copy_regions(store, "k") == {EAST: True, WEST: False}


def test_base_copy_is_never_evicted(store, clock):
    store.put_object("bkt", "k", b"data", WEST)
    read(store, "k", EAST)
    clock.advance(FAR_FUTURE)
    store.sweep()
    assert copy_regions(store, "k") == {WEST: True}
    assert len(blobs(store, WEST)) == 1 and blobs(store, EAST) == []
    assert read(store, "k", WEST) == b"data"


def test_always_evict_serves_remotely_without_replicas(tmp_path, clock):
    with open_store(tmp_path, clock, policy="always-evict") as s:
        s.create_bucket("bkt", EAST)
        s.put_object("bkt", "k", b"data", EAST)
        assert read(s, "k", WEST) == b"data" and read(s, "k", GCP, start=1) == b"ata"
        s.wait_for_replication()
        assert blobs(s, WEST) == [] and blobs(s, GCP) == [] and copy_regions(s, "k") == {EAST: True}


def test_replicate_all_writes_every_region_and_keeps_them(tmp_path, clock):
    with open_store(tmp_path, clock, policy="replicate-all") as s:
        s.create_bucket("bkt", EAST)
        s.put_object("bkt", "k", b"data", WEST)
        assert copy_regions(s, "k") == {WEST: True, EAST: False, GCP: False}
        assert all(len(blobs(s, r)) == 1 for r in REGIONS)
        clock.advance(FAR_FUTURE)
        s.sweep()
        assert all(len(blobs(s, r)) == 1 for r in REGIONS)
        s.put_object("bkt", "k", b"new", EAST)
        assert all(len(blobs(s, r)) == 1 for r in REGIONS) and read(s, "k", GCP) == b"new"


def test_ranged_miss_replicates_the_whole_object_in_the_background(store):
    data = os.urandom(2 * 1024 * 1024)
    store.put_object("bkt", "k", data, EAST)
    assert read(store, "k", GCP, start=100, end=199) == data[100:200]
    store.wait_for_replication(timeout=10)
    assert copy_regions(store, "k") == {EAST: True, GCP: False}
    assert (Path(store.config.regions[GCP].url) / "bkt" / blobs(store, GCP)[0]).read_bytes() == data


def test_abandoned_read_leaves_no_replica(store):
    data = os.urandom(3 * 1024 * 1024)
    store.put_object("bkt", "k", data, EAST)
    _, stream = store.get_object("bkt", "k", WEST)
    assert len(next(stream)) > 0
    stream.close()  # the client went away
    assert blobs(store, WEST) == [] and copy_regions(store, "k") == {EAST: True}
    assert read(store, "k", WEST) == data and len(blobs(store, WEST)) == 1


def test_reads_use_the_cheapest_source(tmp_path, clock):
    """With T_even TTLs a replica's expiry tells which source fed it: egress(source, region) / storage."""
    regions = {"r-a": "x:a", "r-b": "x:b", "r-c": "x:c"}
    storage = {c: 30.0 for c in regions.values()}  # $ per GB-month -> T_even = egress * 0.1 month / 3
    egress = {("x:a", "x:b"): 0.05, ("x:a", "x:c"): 0.09, ("x:b", "x:c"): 0.01,
              ("x:b", "x:a"): 0.05, ("x:c", "x:a"): 0.09, ("x:c", "x:b"): 0.01}
    prices = Prices(storage, egress)
    with open_store(tmp_path, clock, policy="t_even", regions=regions, prices=prices) as s:
        s.create_bucket("bkt", "r-a")
        s.put_object("bkt", "k", b"data", "r-a")
        read(s, "k", "r-b")
        read(s, "k", "r-c")  # the copies are in a (0.09 away) and b (0.01 away)
        expiry = {c.region: c.expires_at for c in s.copies("bkt", "k")}
        assert expiry["r-c"] == pytest.approx(clock.now + prices.t_even("x:b", "x:c"))
        assert expiry["r-b"] == pytest.approx(clock.now + prices.t_even("x:a", "x:b"))


def test_failover_when_a_region_directory_is_removed(store, clock):
    store.put_object("bkt", "k", b"data", EAST)
    read(store, "k", WEST)
    shutil.rmtree(store.config.regions[EAST].url)
    assert read(store, "k", GCP) == b"data"  # from the replica in WEST
    assert read(store, "k", EAST) == b"data"  # the down region's own readers too
    assert read(store, "k", EAST, start=1, end=2) == b"at"
    assert store.head_object("bkt", "k", EAST).size == 4
    with pytest.raises(errors.ServiceUnavailable):
        store.put_object("bkt", "new", b"x", EAST)
    with pytest.raises(errors.NoSuchKey):
        store.head_object("bkt", "new", EAST)
    clock.advance(FAR_FUTURE)
    store.sweep()  # must not fail on the missing region
    shutil.rmtree(store.config.regions[WEST].url)
    shutil.rmtree(store.config.regions[GCP].url)
    with pytest.raises(errors.ServiceUnavailable):
        store.get_object("bkt", "k", WEST)


# ---- crashes ------------------------------------------------------------------------------------------------

def test_body_that_fails_midway_leaves_nothing(store):
    def body():
        yield b"x" * 100_000
        raise ConnectionResetError("client went away")

    store.put_object("bkt", "k", b"old", EAST)
    with pytest.raises(ConnectionResetError):
        store.put_object("bkt", "k", body(), EAST)
    assert read(store, "k") == b"old" and len(blobs(store, EAST)) == 1


def test_write_slower_than_the_grace_period_is_abandoned(store, clock):
    def body():
        yield b"part one "
        clock.advance(store.config.pending_grace + 1)
        assert store.sweep()["abandoned_writes"] == 1  # the sweeper gives up on this write meanwhile
        yield b"part two"

    # the commit is refused (and the sweep also took the old temporary file: the region may say so first)
    with pytest.raises((errors.InternalError, errors.ServiceUnavailable)):
        store.put_object("bkt", "slow", body(), EAST)
    assert_nothing_stored(store, "slow")


CRASHING_WRITER = textwrap.dedent("""
    import sys, time
    from skystore_connector.config import Config
    from skystore_connector.store import SkyStore

    store = SkyStore(Config.local(sys.argv[1], regions=sys.argv[2:], access_keys={"AK": "SK"}))

    def body():
        yield b"x" * 1_000_000
        print("writing", flush=True)
        time.sleep(60)
        yield b"never"

    store.put_object("bkt", "k", body(), sys.argv[2])
""")


def test_process_killed_mid_upload_leaves_no_object_and_its_blob_is_collected(tmp_path, clock):
    with open_store(tmp_path, clock) as s:
        s.create_bucket("bkt", EAST)
        s.put_object("bkt", "k", b"committed before", EAST)
    kill_when_writing(CRASHING_WRITER, str(tmp_path), *REGIONS)
    with open_store(tmp_path, clock) as s:
        assert read(s, "k") == b"committed before"
        assert len(blobs(s, EAST)) == 2  # the committed blob and the killed writer's temporary file
        assert s.sweep()["abandoned_writes"] == 0  # too recent: it might still be running
        assert len(blobs(s, EAST)) == 2
        counts = s.sweep(now=clock.now + FAR_FUTURE)
        assert counts["abandoned_writes"] == 1 and counts["orphan_blobs"] == 1
        assert len(blobs(s, EAST)) == 1 and read(s, "k") == b"committed before"
        assert s.meta.counts()["objects.committed"] == 1 and "objects.pending" not in s.meta.counts()


def test_unreferenced_blobs_are_collected_once_old(store, clock):
    store.put_object("bkt", "k", b"data", EAST)
    stray = Path(store.config.regions[EAST].url) / "bkt" / "stray-blob"
    stray.write_bytes(b"left by a crash")
    assert store.sweep()["orphan_blobs"] == 0
    assert store.sweep(now=clock.now + FAR_FUTURE)["orphan_blobs"] == 1
    assert not stray.exists() and read(store, "k") == b"data"


# ---- concurrent writers -------------------------------------------------------------------------------------

def test_last_write_to_commit_wins_not_the_first_to_start(store):
    slow = first_to_start_last_to_commit(store, store, "bkt", "k", EAST, WEST)
    assert read(store, "k") == b"first to start, last to commit"
    assert store.head_object("bkt", "k", EAST) == slow
    assert len(blobs(store, EAST)) == 1 and blobs(store, WEST) == []


def test_concurrent_writers_to_one_key_never_mix(store):
    payloads = {i: bytes([i]) * (200_000 + i) for i in range(8)}
    returned = {}

    def writer(i: int) -> None:
        def body():
            data = payloads[i]
            for at in range(0, len(data), 50_000):
                time.sleep(0.001)
                yield data[at:at + 50_000]
        returned[i] = store.put_object("bkt", "k", body(), REGIONS[i % 3])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(returned) == 8
    assert sum(len(blobs(store, r)) for r in REGIONS) == 1  # the losers' blobs are gone
    final = read(store, "k")
    winners = [i for i, data in payloads.items() if data == final]
    assert len(winners) == 1
    assert store.head_object("bkt", "k", EAST) == returned[winners[0]]
    assert store.meta.counts()["objects.committed"] == 1 and "objects.deleted" not in store.meta.counts()


# ---- multipart ----------------------------------------------------------------------------------------------

@pytest.fixture
def mp_store(tmp_path, clock):
    with open_store(tmp_path, clock, min_part_size=1024) as s:
        s.create_bucket("bkt", EAST)
        yield s


def test_multipart_round_trip(mp_store):
    s = mp_store
    upload_id = s.create_multipart_upload("bkt", "big", WEST, content_type="application/x-parquet",
                                          metadata={"m": "v"})
    assert [(u.key, u.upload_id) for u in s.list_multipart_uploads("bkt")] == [("big", upload_id)]
    assert s.list_multipart_uploads("bkt", prefix="other") == []
    parts = [os.urandom(2000), os.urandom(1500), b"tail"]
    s.upload_part("bkt", "big", upload_id, 2, b"to be replaced" * 100)
    infos = [s.upload_part("bkt", "big", upload_id, n, io.BytesIO(p), size=len(p), content_md5=md5_b64(p))
             for n, p in zip((1, 2, 3), parts)]
    assert [(p.number, p.size) for p in s.list_parts("bkt", "big", upload_id)] == [(1, 2000), (2, 1500), (3, 4)]
    assert len(blobs(s, WEST, "_multipart")) == 3
    info = s.complete_multipart_upload("bkt", "big", upload_id, [(p.number, f'"{p.etag}"') for p in infos])
    joined = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert info.etag == f"{joined}-3"
    assert (info.size, info.content_type, info.metadata) == (3504, "application/x-parquet", {"m": "v"})
    assert read(s, "big", WEST) == b"".join(parts)
    assert copy_regions(s, "big") == {WEST: True}
    assert blobs(s, WEST, "_multipart") == [] and s.list_multipart_uploads("bkt") == []
    with pytest.raises(errors.NoSuchUpload):
        s.list_parts("bkt", "big", upload_id)
    # a retried completion (the SDK lost the first answer) gets the same object back, as S3 answers it
    assert s.complete_multipart_upload("bkt", "big", upload_id, [(1, infos[0].etag)]).etag == info.etag


def test_multipart_errors(mp_store):
    s = mp_store
    upload_id = s.create_multipart_upload("bkt", "k", EAST)
    small = s.upload_part("bkt", "k", upload_id, 1, b"small")
    big = s.upload_part("bkt", "k", upload_id, 2, b"b" * 1024)
    last = s.upload_part("bkt", "k", upload_id, 3, b"last")
    with pytest.raises(errors.InvalidPart):
        s.complete_multipart_upload("bkt", "k", upload_id, [(2, "0" * 32)])
    with pytest.raises(errors.InvalidPart):
        s.complete_multipart_upload("bkt", "k", upload_id, [(4, big.etag)])
    with pytest.raises(errors.InvalidPartOrder):
        s.complete_multipart_upload("bkt", "k", upload_id, [(3, last.etag), (2, big.etag)])
    with pytest.raises(errors.EntityTooSmall):
        s.complete_multipart_upload("bkt", "k", upload_id, [(1, small.etag), (3, last.etag)])
    with pytest.raises(errors.MalformedXML):
        s.complete_multipart_upload("bkt", "k", upload_id, [])
    for number in (0, 10001):
        with pytest.raises(errors.InvalidArgument):
            s.upload_part("bkt", "k", upload_id, number, b"x")
    with pytest.raises(errors.BadDigest):
        s.upload_part("bkt", "k", upload_id, 4, b"x", content_md5=md5_b64(b"y"))
    with pytest.raises(errors.NoSuchUpload):
        s.upload_part("bkt", "other-key", upload_id, 1, b"x")
    with pytest.raises(errors.NoSuchKey):
        s.head_object("bkt", "k", EAST)
    # a part list skipping numbers is fine (2 and 3 only)
    info = s.complete_multipart_upload("bkt", "k", upload_id, [(2, big.etag), (3, last.etag)])
    assert read(s, "k") == b"b" * 1024 + b"last" and info.etag.endswith("-2")
    second = s.create_multipart_upload("bkt", "k2", EAST)
    s.upload_part("bkt", "k2", second, 1, b"abc")
    s.abort_multipart_upload("bkt", "k2", second)
    assert blobs(s, EAST, "_multipart") == []
    for call in (lambda: s.abort_multipart_upload("bkt", "k2", second),
                 lambda: s.upload_part("bkt", "k2", second, 1, b"x"),
                 lambda: s.list_parts("bkt", "k2", "no-such-id")):
        with pytest.raises(errors.NoSuchUpload):
            call()


def test_deleting_a_bucket_drops_its_unfinished_uploads(mp_store):
    upload_id = mp_store.create_multipart_upload("bkt", "k", EAST)
    mp_store.upload_part("bkt", "k", upload_id, 1, b"abc")
    mp_store.delete_bucket("bkt")
    assert blobs(mp_store, EAST, "_multipart") == [] and mp_store.meta.counts()["uploads"] == 0


def test_idle_multipart_uploads_expire(mp_store, clock):
    upload_id = mp_store.create_multipart_upload("bkt", "k", EAST)
    mp_store.upload_part("bkt", "k", upload_id, 1, b"abc")
    assert mp_store.sweep()["expired_uploads"] == 0
    clock.advance(mp_store.config.multipart_expiry + 1)
    assert mp_store.sweep()["expired_uploads"] == 1
    assert blobs(mp_store, EAST, "_multipart") == []


# ---- the sweeper thread -------------------------------------------------------------------------------------

def test_background_sweeper_evicts(tmp_path, clock):
    with open_store(tmp_path, clock, sweep_interval=0.02) as s:
        s.create_bucket("bkt", EAST)
        s.put_object("bkt", "k", b"data", EAST)
        read(s, "k", WEST)
        s.start_sweeper()
        clock.advance(TTL + 1)
        deadline = time.time() + 5
        while blobs(s, WEST) and time.time() < deadline:
            time.sleep(0.01)
        assert blobs(s, WEST) == []
        assert copy_regions(s, "k") == {EAST: True}
    assert s._sweeper is None  # close() stopped it


def test_conditional_writes_check_at_commit(store):
    """The condition holds when the version becomes current: a writer that passed the early check but
    lost the race to another creator is refused, and its bytes are never visible."""
    from skystore_connector.store import WriteCondition
    create = WriteCondition(if_none_match=True)
    store.put_object("bkt", "k", b"first", EAST, condition=create)
    with pytest.raises(errors.PreconditionFailed):
        store.put_object("bkt", "k", b"second", EAST, condition=create)
    etag = store.head_object("bkt", "k", EAST).etag
    with pytest.raises(errors.PreconditionFailed):
        store.put_object("bkt", "k", b"third", EAST, condition=WriteCondition(if_match='"' + "0" * 32 + '"'))
    store.put_object("bkt", "k", b"fourth", EAST, condition=WriteCondition(if_match=f'"{etag}"'))
    assert read(store, "k") == b"fourth"

    def racing_body():  # another writer creates the key while this body is being written
        yield b"late"
        store.put_object("bkt", "raced", b"winner", EAST)

    with pytest.raises(errors.PreconditionFailed):
        store.put_object("bkt", "raced", racing_body(), EAST, condition=create)
    assert read(store, "raced") == b"winner"
    assert store.meta.counts().get("objects.pending", 0) == 0


def test_stored_headers_and_owner(store):
    headers = {"cache-control": "max-age=5", "content-encoding": "gzip"}
    store.put_object("bkt", "k", b"x", EAST, headers=headers)
    assert store.head_object("bkt", "k", EAST).headers == headers
    assert store.copy_object("bkt", "k", "bkt", "c", EAST).headers == headers
    owned = store.create_bucket("owned", EAST, owner=next(iter(store.config.access_keys)))
    assert store.owner_of(owned) == owned.owner
    assert store.owner_of(store.head_bucket("bkt")) == next(iter(store.config.access_keys))  # no owner: operator's
