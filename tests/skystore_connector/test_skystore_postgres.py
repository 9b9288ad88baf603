"""SkyStore with its metadata in a real PostgreSQL server: the configuration for several gateways sharing one
store. A throwaway server is started for this module (initdb + pg_ctl on a free loopback port); each test gets a
fresh database in it. Two ``SkyStore`` objects over the same database and the same region directories play
two gateways."""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import first_to_start_last_to_commit, kill_when_writing

psycopg2 = pytest.importorskip("psycopg2", reason="the PostgreSQL driver is missing: pip install psycopg2-binary "
                                                  "(part of the test extra)")

from skystore_connector import errors  # noqa: E402
from skystore_connector import store as store_module  # noqa: E402
from skystore_connector.config import Config  # noqa: E402
from skystore_connector.store import SkyStore  # noqa: E402

EAST, WEST, GCP = "aws-us-east-1", "aws-eu-west-1", "gcp-us-central1"
REGIONS = [EAST, WEST, GCP]
TTL = 100.0
FAR_FUTURE = 10 * 365 * 24 * 3600.0


# ---- a throwaway PostgreSQL server ---------------------------------------------------------------------------

def postgres_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: the one on PATH, else the newest Debian-style install."""
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)  # postgres is found next to the real initdb
    installed = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates += sorted(installed, reverse=True,
                         key=lambda p: tuple(int(n) for n in re.findall(r"\d+", p.parent.name)))
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def unprivileged() -> tuple[dict, int | None, int | None]:
    """subprocess arguments (and uid, gid) that run the server as an unprivileged user: initdb and postgres
    refuse to run as root."""
    if os.geteuid() != 0:
        return {}, None, None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to run PostgreSQL as")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}, nobody.pw_uid, nobody.pw_gid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    port: int
    icu: bool  # the databases' default collation is ICU en-US, which does not sort by bytes
    _databases = itertools.count()

    def connect(self, dbname: str = "postgres"):
        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname)

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        name = f"skystore_{next(self._databases)}"
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def pg_server():
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin: install the postgresql package (apt-get install postgresql)")
    as_user, uid, gid = unprivileged()
    # /tmp rather than $TMPDIR: the unprivileged user must be able to reach it, and the unix socket's path
    # must stay under ~100 bytes
    base = Path(tempfile.mkdtemp(prefix="skystore-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    if uid is not None:
        os.chown(base, uid, gid)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(base), "LC_ALL": "C.UTF-8"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=base, env=env, capture_output=True,
                              text=True, timeout=60, **as_user)

    data = base / "data"
    common = ["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"]
    # an ICU default collation sorts "a" before "Z": the keys' "C" collation is then really needed for byte order
    icu = run("initdb", "-D", str(data), *common, "--locale-provider=icu", "--icu-locale=en-US").returncode == 0
    if not icu:  # a server without ICU (or older than 15): the libc C.UTF-8 default
        shutil.rmtree(data, ignore_errors=True)
        done = run("initdb", "-D", str(data), *common)
        if done.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            pytest.fail(f"initdb failed:\n{done.stdout}\n{done.stderr}")
    log_file = base / "server.log"
    server = None
    try:
        for _ in range(3):  # another process may take the free port before the server binds it
            port = free_port()
            options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                       f"-c synchronous_commit=off -c full_page_writes=off")
            if run("pg_ctl", "-D", str(data), "-l", str(log_file), "-o", options, "-w", "-t", "30",
                   "start").returncode == 0:
                server = PostgresServer(port, icu)
                break
        if server is None:
            log = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
            pytest.fail(f"the PostgreSQL server did not start:\n{log}")
        yield server
    finally:
        if server is not None:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.new_database()


# ---- helpers ------------------------------------------------------------------------------------------------


def open_store(root: Path, clock, metadata_url: str = "", **settings) -> SkyStore:
    """A gateway over local region directories under ``root``; two with the same ``root`` and URL share all."""
    config = Config.local(root, regions=REGIONS, access_keys={"AK": "SK"}, policy=f"fixed:{TTL:g}",
                          metadata_url=metadata_url, **settings)
    return SkyStore(config, clock=clock)


@pytest.fixture
def gateways(tmp_path, clock, pg_url):
    """Two gateways sharing one PostgreSQL database and the same region directories, with bucket "bkt"."""
    with open_store(tmp_path, clock, pg_url) as a, open_store(tmp_path, clock, pg_url) as b:
        assert a.meta.engine.dialect.name == b.meta.engine.dialect.name == "postgresql"
        a.create_bucket("bkt", EAST)
        yield a, b


def read(store: SkyStore, key: str, region: str = EAST, **range_) -> bytes:
    _, stream = store.get_object("bkt", key, region, **range_)
    return b"".join(stream)


def blobs(store: SkyStore, region: str, folder: str = "bkt") -> list[str]:
    path = Path(store.config.regions[region].url) / folder
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def ready_regions(store: SkyStore, key: str) -> dict[str, bool]:
    """Region -> is_base, for ready copies."""
    return {c.region: c.is_base for c in store.copies("bkt", key) if c.state == "ready"}


def listed(store: SkyStore, **kwargs) -> list[str]:
    result = store.list_objects("bkt", max_keys=5000, **kwargs)
    return [o.key for o in result.objects] + result.common_prefixes


# ---- tests --------------------------------------------------------------------------------------------------

def test_round_trip_on_postgres(tmp_path, clock, pg_url):
    with open_store(tmp_path, clock, pg_url, min_part_size=1024) as s:
        assert s.meta.engine.dialect.name == "postgresql"
        s.create_bucket("bkt", EAST)
        with pytest.raises(errors.BucketAlreadyOwnedByYou):
            s.create_bucket("bkt", WEST)
        info = s.put_object("bkt", "dir/k", b"hello postgres", EAST, content_type="text/plain",
                            metadata={"owner": "ünïcode"})
        assert s.head_object("bkt", "dir/k", EAST) == info
        assert (info.size, info.metadata) == (14, {"owner": "ünïcode"})
        assert read(s, "dir/k") == b"hello postgres" and read(s, "dir/k", start=6) == b"postgres"
        s.put_object("bkt", "dir/k", b"replaced", EAST)
        assert read(s, "dir/k") == b"replaced" and len(blobs(s, EAST)) == 1  # the old blob went at once
        s.put_object("bkt", "other", b"x", EAST)
        assert listed(s) == ["dir/k", "other"] and listed(s, delimiter="/") == ["other", "dir/"]

        upload_id = s.create_multipart_upload("bkt", "big", WEST, metadata={"m": "v"})
        parts = [os.urandom(2000), os.urandom(1500), b"tail"]
        infos = [s.upload_part("bkt", "big", upload_id, n, p) for n, p in enumerate(parts, 1)]
        assert [(p.number, p.size) for p in s.list_parts("bkt", "big", upload_id)] == [(1, 2000), (2, 1500), (3, 4)]
        big = s.complete_multipart_upload("bkt", "big", upload_id, [(p.number, p.etag) for p in infos])
        assert big.etag.endswith("-3") and big.metadata == {"m": "v"}
        assert read(s, "big", WEST) == b"".join(parts) and blobs(s, WEST, "_multipart") == []
        assert s.list_multipart_uploads("bkt") == []

        for key in ("dir/k", "other", "big"):
            s.delete_object("bkt", key)
        with pytest.raises(errors.NoSuchKey):
            read(s, "big", WEST)
        assert s.list_objects("bkt").objects == [] and blobs(s, EAST) == blobs(s, WEST) == []
        s.delete_bucket("bkt")
        assert s.list_buckets() == [] and s.meta.counts() == {"buckets": 0, "uploads": 0}


def run_together(count: int, action) -> tuple[list, list[Exception]]:
    """``action(i)`` for i in range(count), in threads released at once; what they returned and raised."""
    barrier = threading.Barrier(count)
    returned, raised = [], []

    def run(i: int) -> None:
        barrier.wait(10)
        try:
            returned.append(action(i))
        except Exception as e:  # noqa: BLE001 -- the caller checks every outcome
            raised.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return returned, raised


def test_gateways_started_together_share_one_schema_and_one_bucket(tmp_path, clock, pg_url):
    opened, failures = run_together(4, lambda _: open_store(tmp_path, clock, pg_url))
    try:
        assert failures == [] and len(opened) == 4
        # racing creations of one bucket: one wins, the others are told it exists (not a SQL error)
        created, refused = run_together(4, lambda i: opened[i].create_bucket("bkt", REGIONS[i % 3]))
        assert len(created) == 1 and [type(e) for e in refused] == [errors.BucketAlreadyOwnedByYou] * 3
        assert [b.name for b in opened[3].list_buckets()] == ["bkt"]
    finally:
        for s in opened:
            s.close()


def test_parts_racing_an_abort_leave_no_rows_or_blobs(gateways):
    a, b = gateways
    for _ in range(5):
        upload_id = a.create_multipart_upload("bkt", "big", EAST)
        # parts keep arriving through a while b aborts: each part is either in or refused as NoSuchUpload
        _, raised = run_together(4, lambda i: b.abort_multipart_upload("bkt", "big", upload_id) if i == 0 else
                                 [a.upload_part("bkt", "big", upload_id, n, b"p" * 100) for n in range(1, 6)])
        assert {type(e) for e in raised} <= {errors.NoSuchUpload}
        assert blobs(a, EAST, "_multipart") == []
    assert a.meta.counts() == {"buckets": 1, "uploads": 0}


def test_an_object_written_through_one_gateway_is_read_through_the_other(gateways, clock):
    a, b = gateways
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        b.create_bucket("bkt", WEST)
    written = a.put_object("bkt", "k", b"v1", EAST)
    assert b.head_object("bkt", "k", EAST) == written and read(b, "k") == b"v1"
    assert listed(b) == ["k"]

    # replicate-on-read by b; a sees the replica and is served from it in WEST (a local hit, so no new blob)
    assert read(b, "k", WEST) == b"v1"
    assert ready_regions(a, "k") == {EAST: True, WEST: False} and len(blobs(a, WEST)) == 1
    assert read(a, "k", WEST) == b"v1" and len(blobs(b, WEST)) == 1
    replica = next(c for c in a.copies("bkt", "k") if c.region == WEST)
    assert replica.expires_at == pytest.approx(clock.now + TTL)

    # an overwrite through a replaces the version for b and removes both old blobs
    a.put_object("bkt", "k", b"v2", WEST)
    assert read(b, "k", WEST) == b"v2" and ready_regions(b, "k") == {WEST: True}
    assert blobs(b, EAST) == [] and len(blobs(b, WEST)) == 1

    # b replicates again into EAST; after the TTL a's sweeper evicts that replica and b stops seeing it
    assert read(b, "k", EAST) == b"v2" and ready_regions(a, "k") == {WEST: True, EAST: False}
    clock.advance(TTL + 1)
    assert ready_regions(b, "k") == {WEST: True}  # expired copies are invisible before the sweep
    assert a.sweep()["evicted"] == 1 and blobs(b, EAST) == []

    b.delete_object("bkt", "k")
    with pytest.raises(errors.NoSuchKey):
        a.head_object("bkt", "k", EAST)
    assert a.copies("bkt", "k") == [] and blobs(a, WEST) == []


def test_last_commit_wins_across_gateways(gateways):
    a, b = gateways
    slow = first_to_start_last_to_commit(a, b, "bkt", "k", EAST, WEST)
    assert read(a, "k") == read(b, "k") == b"first to start, last to commit"
    assert b.head_object("bkt", "k", EAST) == slow
    assert len(blobs(a, EAST)) == 1 and blobs(a, WEST) == []


def test_concurrent_writers_on_two_gateways_leave_exactly_one_version(gateways):
    a, b = gateways
    writers = 8
    payloads = {i: bytes([i]) * (100_000 + i) for i in range(writers)}
    all_written = threading.Barrier(writers)
    returned, failures = {}, []

    def write(i: int) -> None:
        def body():
            data = payloads[i]
            yield data[:50_000]
            all_written.wait(20)  # every writer holds a pending version, so the commits race each other
            yield data[50_000:]
        try:
            returned[i] = (a, b)[i % 2].put_object("bkt", "k", body(), REGIONS[i % 3])
        except Exception as e:  # noqa: BLE001 -- a lost commit must be an error in the test, not a dead thread
            failures.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == [] and len(returned) == writers
    current = a.head_object("bkt", "k", EAST)
    assert b.head_object("bkt", "k", WEST) == current
    # every commit retired the version before it, so the one still current committed last
    winners = [i for i, info in returned.items() if info == current]
    assert len(winners) == 1
    assert read(b, "k", REGIONS[winners[0] % 3]) == payloads[winners[0]]  # its base region: no replica
    assert sum(len(blobs(a, r)) for r in REGIONS) == 1  # the losers' blobs are gone
    assert a.meta.counts() == {"objects.committed": 1, "copies.ready": 1, "buckets": 1, "uploads": 0}


def test_listing_order_matches_sqlite_for_non_ascii_keys(tmp_path, clock, pg_server, pg_url, monkeypatch):
    keys = ["z", "é", "😀", "Z", "a-", "a", "a/", "a/é", "a/z", "\u00ff", "\uffff", "ß", "Ω/1", "Ω/2", "日本"]
    if pg_server.icu:  # the keys' "C" collation is what makes the order right: the default would differ
        conn = pg_server.connect()
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT 'a' < 'Z'")
            assert cursor.fetchone() == (True,)
        conn.close()
    with open_store(tmp_path / "pg", clock, pg_url) as pg, open_store(tmp_path / "sqlite", clock) as lite:
        assert lite.meta.engine.dialect.name == "sqlite"
        for s in (pg, lite):
            s.create_bucket("bkt", EAST)
            for key in keys:
                s.put_object("bkt", key, b".", EAST)
                s.create_multipart_upload("bkt", key, EAST)
        monkeypatch.setattr(store_module, "LIST_BATCH", 3)  # several SQL queries per listing
        queries = [{}, {"marker": "z"}, {"marker": "a/"}, {"delimiter": "/"}, {"prefix": "a/"}, {"prefix": "Ω"},
                   {"delimiter": "/", "marker": "a"}]
        for query in queries:
            assert listed(pg, **query) == listed(lite, **query), query
        assert listed(pg) == sorted(keys, key=str.encode)
        assert listed(pg, delimiter="/") == ["Z", "a", "a-", "z", "ß", "é", "ÿ", "日本", "\uffff", "😀", "a/", "Ω/"]
        uploads = [[u.key for u in s.list_multipart_uploads("bkt")] for s in (pg, lite)]
        assert uploads[0] == uploads[1] == sorted(keys, key=str.encode)


CRASHING_WRITER = textwrap.dedent("""
    import sys, time
    from skystore_connector.config import Config
    from skystore_connector.store import SkyStore

    root, url, regions = sys.argv[1], sys.argv[2], sys.argv[3:]
    store = SkyStore(Config.local(root, regions=regions, access_keys={"AK": "SK"}, metadata_url=url))

    def body():
        yield b"x" * 1_000_000
        print("writing", flush=True)
        time.sleep(60)
        yield b"never"

    store.put_object("bkt", "k", body(), regions[0])
""")


def test_a_killed_writer_is_collected_by_the_sweep(gateways, tmp_path, clock, pg_url):
    a, b = gateways
    a.put_object("bkt", "k", b"committed before", EAST)
    kill_when_writing(CRASHING_WRITER, str(tmp_path), pg_url, *REGIONS)
    assert read(b, "k") == b"committed before"
    assert b.meta.counts()["objects.pending"] == 1
    assert len(blobs(a, EAST)) == 2  # the committed blob and the killed writer's temporary file
    assert b.sweep()["abandoned_writes"] == 0  # too recent: it might still be running
    counts = b.sweep(now=clock.now + FAR_FUTURE)
    assert counts["abandoned_writes"] == 1 and counts["orphan_blobs"] == 1
    assert len(blobs(a, EAST)) == 1 and read(a, "k") == b"committed before"
    # the crashed writer's connection left no lock behind: both gateways still commit
    b.put_object("bkt", "k", b"after the crash", WEST)
    assert read(a, "k", WEST) == b"after the crash"
    assert a.meta.counts() == {"objects.committed": 1, "copies.ready": 1, "buckets": 1, "uploads": 0}
