"""SkyStore's lower layers on their own: the TOML config, the SQL metadata (real SQLite files) and the region
backends (real directories, fsspec memory://)."""
from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import pytest

from skystore_connector import config as config_module
from skystore_connector import errors
from skystore_connector.config import Config, ConfigError, RegionConfig
from skystore_connector.metadata import Metadata
from skystore_connector.regions import BlobNotFound, FsspecRegion, LocalRegion, RegionUnavailable, open_region

# ---- config -------------------------------------------------------------------------------------------------


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "skystore.toml"
    path.write_text(text)
    return path


MINIMAL = """
[access_keys]
AK = "SK"
[regions.aws-us-east-1]
cloud = "aws:us-east-1"
url = "regions/east"
"""


def test_the_documented_example_loads(tmp_path):
    example = config_module.__doc__.split("A full example::", 1)[1]
    text = "\n".join(line[4:] for line in example.splitlines())
    cfg = Config.load(write_toml(tmp_path, text))
    assert cfg.default_region == "aws-us-east-1" and cfg.port == 9000
    assert cfg.regions["aws-us-east-1"] == RegionConfig("aws-us-east-1", "aws:us-east-1",
                                                        str(tmp_path / "regions/aws-us-east-1"), 9001, {})
    assert cfg.regions["gcp-us-central1"].storage_options == {"project": "my-project"}
    assert not cfg.regions["gcp-us-central1"].is_local
    assert cfg.state_dir == tmp_path / "state" and cfg.prices_dir == Path("/data/skystore")
    assert cfg.clouds == {"aws-us-east-1": "aws:us-east-1", "gcp-us-central1": "gcp:us-central1"}
    assert (cfg.max_object_size, cfg.min_part_size, cfg.pending_grace) == (5 * 1024**3, 5 * 1024**2, 3600)


def test_defaults(tmp_path):
    cfg = Config.load(write_toml(tmp_path, MINIMAL))
    assert (cfg.host, cfg.port, cfg.policy, cfg.sweep_interval, cfg.prices_dir) == \
        ("127.0.0.1", 9000, "learned", 60.0, None)
    assert cfg.default_region == "aws-us-east-1"
    assert cfg.state_dir == tmp_path / "skystore-state"
    assert cfg.metadata_url == f"sqlite:///{tmp_path / 'skystore-state' / 'metadata.db'}"
    assert cfg.regions["aws-us-east-1"].url == str(tmp_path / "regions/east")


def test_missing_access_keys_are_generated_and_logged(tmp_path, caplog):
    text = MINIMAL.replace('[access_keys]\nAK = "SK"\n', "")
    with caplog.at_level(logging.WARNING, logger="skystore_connector.config"):
        cfg = Config.load(write_toml(tmp_path, text))
    [(key, secret)] = cfg.access_keys.items()
    assert key in caplog.text and secret in caplog.text


@pytest.mark.parametrize("text, message", [
    ("colour = 'blue'\n" + MINIMAL, "unknown setting(s): colour"),
    (MINIMAL + "colour = 'blue'\n", "unknown setting(s) colour"),
    (MINIMAL.replace("aws-us-east-1]", "aws_us_east_1]"), "bad region name"),
    (MINIMAL.replace('"aws:us-east-1"', '"us-east-1"'), "bad cloud"),
    ("default_region = 'mars'\n" + MINIMAL, "default_region 'mars' is not a configured region"),
    ("port = 9001\n" + MINIMAL + "port = 9001\n", "both use port 9001"),
    (MINIMAL.replace('url = "regions/east"\n', ""), "url (a string) is required"),
    ("[access_keys]\nAK='SK'\n", "no regions configured"),
    ("sweep_interval = 0\n" + MINIMAL, "sweep_interval must be > 0"),
    ("max_object_size = -1\n" + MINIMAL, "max_object_size must be a positive"),
    ("port = 70000\n" + MINIMAL, "bad port"),
    ("this is = not toml [", "skystore.toml"),
])
def test_bad_configs_are_explained(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        Config.load(write_toml(tmp_path, text))
    assert message in str(caught.value)


def test_local_config(tmp_path):
    cfg = Config.local(tmp_path, regions=["aws-us-east-1", "gcp-us-central1"], access_keys={"A": "S"},
                       min_part_size=10)
    assert cfg.clouds == {"aws-us-east-1": "aws:us-east-1", "gcp-us-central1": "gcp:us-central1"}
    assert cfg.port == 0 and cfg.min_part_size == 10 and cfg.access_keys == {"A": "S"}
    assert cfg.regions["gcp-us-central1"].url == str(tmp_path / "regions" / "gcp-us-central1")
    named = Config.local(tmp_path, regions={"east": "aws:us-east-1"})
    assert named.clouds == {"east": "aws:us-east-1"}


def test_config_takes_region_names_in_either_spelling(tmp_path):
    text = MINIMAL + '''[regions."aws:eu-west-1"]
cloud = "aws:eu-west-1"
url = "regions/west"
'''
    cfg = Config.load(write_toml(tmp_path, 'default_region = "aws:eu-west-1"\n' + text))
    assert list(cfg.regions) == ["aws-us-east-1", "aws-eu-west-1"]
    assert cfg.regions["aws-eu-west-1"].name == "aws-eu-west-1" and cfg.default_region == "aws-eu-west-1"
    assert cfg.find_region("aws:us-east-1") == cfg.find_region("aws-us-east-1") == "aws-us-east-1"
    local = Config.local(tmp_path, regions=["aws:us-east-1", "gcp:us-west1-a"])
    assert local.clouds == {"aws-us-east-1": "aws:us-east-1", "gcp-us-west1-a": "gcp:us-west1-a"}


@pytest.mark.parametrize("text, message", [
    ("default_region = 'aws:mars-1'\n" + MINIMAL, "(aws-us-east-1 (aws:us-east-1))"),
    (MINIMAL + '[regions."aws:us-east-1"]\ncloud = "aws:us-east-1"\nurl = "regions/again"\n',
     "region 'aws:us-east-1' is configured twice (also as 'aws-us-east-1')"),
])
def test_region_name_errors_show_both_spellings(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        Config.load(write_toml(tmp_path, text))
    assert message in str(caught.value)


# ---- metadata -----------------------------------------------------------------------------------------------

@pytest.fixture
def meta(tmp_path):
    m = Metadata(f"sqlite:///{tmp_path / 'state' / 'metadata.db'}")
    m.create_bucket("bkt", "east", 1.0)
    yield m
    m.close()


def put(meta: Metadata, key: str, region: str = "east", now: float = 10.0, size: int = 1):
    """A complete write: begin (pending rows) and commit."""
    version, copies = meta.begin_version("bkt", key, f"v{key}{now}{region}", "t/x", {"m": "1"},
                                         [(region, f"bkt/{key}-{now:g}", True)], now)
    return meta.commit_version(version.id, size=size, etag="e", ready={copies[0].id: None}, now=now + 1)


def test_buckets(meta):
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        meta.create_bucket("bkt", "west", 2.0)
    assert [b.name for b in meta.buckets()] == ["bkt"] and meta.bucket("bkt").region == "east"
    put(meta, "k")
    with pytest.raises(errors.BucketNotEmpty):
        meta.delete_bucket("bkt")
    meta.delete_key("bkt", "k")
    meta.delete_bucket("bkt")
    assert meta.bucket("bkt") is None
    with pytest.raises(errors.NoSuchBucket):
        meta.delete_bucket("bkt")
    with pytest.raises(errors.NoSuchBucket):
        meta.begin_version("bkt", "k", "v", "t", {}, [("east", "p", True)], 1.0)


def test_pending_versions_are_invisible_until_commit(meta):
    version, copies = meta.begin_version("bkt", "k", "v1", "t/x", {"m": "1"}, [("east", "bkt/p1", True),
                                                                              ("west", "bkt/p2", False)], 5.0)
    assert meta.current("bkt", "k") is None
    assert meta.list_versions("bkt", lower=None, inclusive=True, upper=None, limit=10) == []
    committed, garbage, parts = meta.commit_version(version.id, size=3, etag="abc", ready={copies[0].id: None},
                                                    now=6.0)
    assert (garbage, parts) == ([], [])
    current, found = meta.current("bkt", "k")
    assert current == committed and (current.size, current.etag, current.last_modified) == (3, "abc", 6.0)
    assert [(c.region, c.state, c.is_base) for c in found] == [("east", "ready", True)]  # west never written


def test_commit_retires_the_previous_version(meta):
    first, _, _ = put(meta, "k", now=10)
    second, garbage, _ = put(meta, "k", region="west", now=20)
    assert [c.path for c in garbage] == ["bkt/k-10"]
    assert meta.current("bkt", "k")[0].id == second.id
    assert [c.path for c in meta.dead_copies(pending_before=0)] == ["bkt/k-10"]
    meta.drop_copy(garbage[0].id)  # the last copy of a retired version takes its row along
    assert meta.counts() == {"objects.committed": 1, "copies.ready": 1, "buckets": 1, "uploads": 0}


def test_commit_order_not_start_order(meta):
    early, early_copies = meta.begin_version("bkt", "k", "early", "t", {}, [("east", "p-early", True)], 1.0)
    late, late_copies = meta.begin_version("bkt", "k", "late", "t", {}, [("east", "p-late", True)], 2.0)
    meta.commit_version(late.id, size=1, etag="late", ready={late_copies[0].id: None}, now=3.0)
    meta.commit_version(early.id, size=1, etag="early", ready={early_copies[0].id: None}, now=4.0)
    assert meta.current("bkt", "k")[0].etag == "early"


def test_concurrent_commits_leave_exactly_one_current_version(meta):
    def writer(i: int) -> None:
        for round_ in range(10):
            put(meta, "k", now=float(i * 100 + round_))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    counts = meta.counts()
    assert counts["objects.committed"] == 1 and counts["objects.deleted"] == 59


def test_abandoned_writes(meta):
    version, _ = meta.begin_version("bkt", "k", "v", "t", {}, [("east", "p", True)], 5.0)
    assert meta.expire_stale_versions(pending_before=5.0) == 0
    assert meta.expire_stale_versions(pending_before=5.1) == 1
    with pytest.raises(errors.InternalError):
        meta.commit_version(version.id, size=1, etag="e", ready={}, now=6.0)
    assert [c.path for c in meta.dead_copies(pending_before=0)] == ["p"]
    other, copies = meta.begin_version("bkt", "k2", "v2", "t", {}, [("east", "p2", True)], 5.0)
    assert [c.path for c in meta.abandon_version(other.id)] == ["p2"]
    assert meta.current("bkt", "k2") is None


def test_replica_rows(meta):
    version, _, _ = put(meta, "k")
    replica = meta.add_copy(version.id, "west", "bkt/r1", now=20.0)
    assert meta.add_copy(version.id, "west", "bkt/r2", now=20.0) is None  # one replication at a time
    assert meta.finish_copy(replica.id, expires_at=100.0)
    assert meta.add_copy(version.id, "west", "bkt/r2", now=50.0) is None  # live: no second copy
    meta.extend_copy(replica.id, 80.0, now=50.0)  # never shortens
    meta.extend_copy(replica.id, 150.0, now=50.0)
    assert {c.region: c.expires_at for c in meta.current("bkt", "k")[1]}["west"] == 150.0
    assert [c.id for c in meta.expired_copies(now=150.0)] == [replica.id]
    meta.extend_copy(replica.id, 500.0, now=151.0)  # an expired copy is not revived
    assert {c.region: c.expires_at for c in meta.current("bkt", "k")[1]}["west"] == 150.0
    second = meta.add_copy(version.id, "west", "bkt/r2", now=151.0)  # the expired one awaits the sweep
    assert second is not None
    meta.extend_copy(second.id, None, now=151.0)  # pending copies are not extended
    put(meta, "k", now=200.0)  # a new version: the replica being written must not be published
    assert not meta.finish_copy(second.id, expires_at=300.0)
    assert meta.add_copy(version.id, "east", "bkt/r3", now=210.0) is None
    assert {"bkt/r1", "bkt/r2"} <= {c.path for c in meta.dead_copies(pending_before=0)}


def test_forever_replicas_and_stale_pending_replicas(meta):
    version, _, _ = put(meta, "k")
    forever = meta.add_copy(version.id, "west", "w", now=20.0)
    meta.finish_copy(forever.id, None)
    assert meta.expired_copies(now=1e12) == []
    stuck = meta.add_copy(version.id, "gcp", "g", now=20.0)
    assert meta.dead_copies(pending_before=20.0) == []
    assert [c.id for c in meta.dead_copies(pending_before=21.0)] == [stuck.id]
    assert meta.referenced_paths("west") == {"w"} and meta.referenced_paths("east") == {"bkt/k-10"}


def test_list_versions_in_utf8_byte_order(meta):
    keys = ["b", "a", "ä", "a/x", "😀", "\uffff", "B"]
    for key in keys:
        put(meta, key)
    listed = [v.key for v in meta.list_versions("bkt", lower=None, inclusive=True, upper=None, limit=100)]
    assert listed == sorted(keys, key=str.encode)
    window = meta.list_versions("bkt", lower="a", inclusive=False, upper="b", limit=100)
    assert [v.key for v in window] == ["a/x"]
    assert [v.key for v in meta.list_versions("bkt", lower="a", inclusive=True, upper="b", limit=1)] == ["a"]


def test_multipart_rows(meta):
    upload = meta.create_upload("bkt", "k", "east", "t/x", {"a": "b"}, now=1.0)
    assert meta.upload("bkt", "k", upload.upload_id) == upload
    with pytest.raises(errors.NoSuchUpload):
        meta.upload("bkt", "other", upload.upload_id)
    first = meta.begin_part(upload, 1, "_multipart/1a", now=2.0)
    meta.finish_part(first, "e1", 10, now=3.0)
    again = meta.begin_part(upload, 1, "_multipart/1b", now=4.0)
    ready, replaced = meta.finish_part(again, "e1b", 11, now=5.0)
    assert [p.path for p in replaced] == ["_multipart/1a"] and ready.etag == "e1b"
    pending = meta.begin_part(upload, 2, "_multipart/2", now=6.0)
    assert [p.number for p in meta.ready_parts(upload.upload_id)] == [1]
    assert meta.referenced_paths("east") == {"_multipart/1b", "_multipart/2"}  # 1a's row went; its blob next
    assert [p.id for p in meta.stale_parts(pending_before=6.5)] == [pending.id]
    assert [u.upload_id for u in meta.uploads("bkt", prefix="k")] == [upload.upload_id]
    assert meta.stale_uploads(initiated_before=1.0) == []
    dropped = meta.delete_upload(upload.upload_id)
    assert {p.path for p in dropped} == {"_multipart/1b", "_multipart/2"}
    with pytest.raises(errors.NoSuchUpload):
        meta.finish_part(pending, "e2", 1, now=7.0)  # the upload ended while the part was written
    with pytest.raises(errors.NoSuchUpload):
        meta.begin_part(upload, 3, "_multipart/3", now=8.0)


def test_completing_an_upload_is_atomic_with_the_commit(meta):
    upload = meta.create_upload("bkt", "k", "east", "t/x", {}, now=1.0)
    part, _ = meta.finish_part(meta.begin_part(upload, 1, "_multipart/p", now=2.0), "e", 3, now=2.0)
    version, copies = meta.begin_version("bkt", "k", "v", "t/x", {}, [("east", "bkt/v", True)], 3.0)
    _, _, parts = meta.commit_version(version.id, size=3, etag="x-1", ready={copies[0].id: None}, now=4.0,
                                      upload_id=upload.upload_id)
    assert [p.path for p in parts] == ["_multipart/p"] and meta.counts()["uploads"] == 0
    racing, racing_copies = meta.begin_version("bkt", "k", "v2", "t/x", {}, [("east", "bkt/v2", True)], 5.0)
    with pytest.raises(errors.NoSuchUpload):  # a second completion of the same upload
        meta.commit_version(racing.id, size=3, etag="x-1", ready={racing_copies[0].id: None}, now=6.0,
                            upload_id=upload.upload_id)
    assert meta.current("bkt", "k")[0].version_id == "v"


def test_metadata_survives_reopening(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    first = Metadata(url)
    first.create_bucket("bkt", "east", 1.0)
    put(first, "k")
    first.close()
    again = Metadata(url)
    assert again.current("bkt", "k")[0].key == "k"
    with again.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    again.close()


# ---- regions ------------------------------------------------------------------------------------------------

def test_local_region_atomic_writes(tmp_path):
    region = LocalRegion("east", tmp_path / "east")
    writer = region.writer("bkt/blob")
    writer.write(b"hello ")
    writer.write(b"world")
    assert [p for p, _ in region.list_blobs()][0].startswith("bkt/.blob.tmp-")  # not under its name yet
    with pytest.raises(BlobNotFound):
        region.read("bkt/blob")
    writer.commit()
    assert b"".join(region.read("bkt/blob")) == b"hello world"
    assert b"".join(region.read("bkt/blob", 6, 3)) == b"wor"
    assert b"".join(region.read("bkt/blob", 6)) == b"world"
    aborted = region.writer("bkt/other")
    aborted.write(b"partial")
    aborted.abort()
    assert [p for p, _ in region.list_blobs()] == ["bkt/blob"]
    region.delete("bkt/blob")
    region.delete("bkt/blob")
    assert list(region.list_blobs()) == []


def test_local_region_down_when_its_directory_is_removed(tmp_path):
    region = open_region(RegionConfig("east", "aws:us-east-1", str(tmp_path / "east")))
    assert isinstance(region, LocalRegion) and region.available()
    writer = region.writer("bkt/blob")
    writer.write(b"x")
    writer.commit()
    shutil.rmtree(tmp_path / "east")
    assert not region.available()
    for call in (lambda: region.read("bkt/blob"), lambda: region.writer("bkt/new"),
                 lambda: region.delete("bkt/blob"), lambda: list(region.list_blobs())):
        with pytest.raises(RegionUnavailable):
            call()
    assert not (tmp_path / "east").exists()  # a write does not quietly recreate a removed region


@pytest.mark.parametrize("url", ["memory://skystore-test/east", "file://{tmp}/fs-east"])
def test_fsspec_region(tmp_path, url):
    region = open_region(RegionConfig("east", "aws:us-east-1", url.format(tmp=tmp_path)))
    assert isinstance(region, FsspecRegion) and region.available()
    writer = region.writer("bkt/blob")
    writer.write(b"0123")
    writer.write(b"456789")
    writer.commit()
    assert b"".join(region.read("bkt/blob")) == b"0123456789"
    assert b"".join(region.read("bkt/blob", 2, 3)) == b"234"
    aborted = region.writer("bkt/aborted")
    aborted.write(b"x")
    aborted.abort()
    listed = dict(region.list_blobs())
    assert list(listed) == ["bkt/blob"] and listed["bkt/blob"] > 0
    with pytest.raises(BlobNotFound):
        region.read("bkt/missing")
    region.delete("bkt/blob")
    region.delete("bkt/blob")
    assert dict(region.list_blobs()) == {}
