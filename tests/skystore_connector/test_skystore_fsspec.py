"""skystore:// through fsspec against the real gateway on loopback: fsspec itself, pandas, pyarrow, DuckDB.

Parquet and CSV round trips, listings, ranged reads of a multipart upload, and the configuration rules
(arguments, environment variables, the instance cache, the error without an endpoint).
"""

from __future__ import annotations

import pickle

import pytest

fsspec = pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from skystore_connector.fs import SkyStoreConfigError, SkyStoreFileSystem  # noqa: E402

REGION = "aws-us-east-1"
OTHER = "gcp-us-central1"
BUCKET = "tables"


@pytest.fixture(scope="module")
def gateway():
    testing = pytest.importorskip("skystore_connector.testing")
    with testing.local_gateway(regions=[REGION, OTHER]) as gw:
        gw.client(REGION).create_bucket(Bucket=BUCKET)
        yield gw


@pytest.fixture(scope="module")
def opts(gateway):
    return {"endpoint_url": gateway.endpoint(REGION), "key": gateway.access_key, "secret": gateway.secret_key,
            "region": REGION}


@pytest.fixture(scope="module")
def fs(opts):
    return fsspec.filesystem("skystore", **opts)


def _frame(n=50):
    return pd.DataFrame({"id": range(n), "name": [f"row {i}, with a comma" for i in range(n)],
                         "score": [i / 7 for i in range(n)]})


def test_protocol_is_registered():
    assert fsspec.get_filesystem_class("skystore") is SkyStoreFileSystem


def test_open_write_read_list_delete(fs, opts, gateway):
    with fsspec.open(f"skystore://{BUCKET}/plain/hello.txt", "wb", **opts) as f:
        f.write(b"hello skystore\n")
    with fsspec.open(f"skystore://{BUCKET}/plain/hello.txt", "rb", **opts) as f:
        assert f.read() == b"hello skystore\n"
    assert fs.cat(f"{BUCKET}/plain/hello.txt") == b"hello skystore\n"
    assert fs.info(f"skystore://{BUCKET}/plain/hello.txt")["size"] == 15
    assert fs.ls(f"{BUCKET}/plain", detail=False) == [f"{BUCKET}/plain/hello.txt"]
    assert fs.isdir(f"{BUCKET}/plain") and fs.isfile(f"{BUCKET}/plain/hello.txt")
    assert gateway.has_copy(REGION, BUCKET, "plain/hello.txt")
    fs.rm(f"{BUCKET}/plain/hello.txt")
    assert not fs.exists(f"{BUCKET}/plain/hello.txt")
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{BUCKET}/plain/hello.txt")


def test_unstrip_and_strip_protocol(fs):
    assert fs._strip_protocol(f"skystore://{BUCKET}/a/b.csv") == f"{BUCKET}/a/b.csv"
    assert fs.unstrip_protocol(f"{BUCKET}/a/b.csv") == f"skystore://{BUCKET}/a/b.csv"


def test_multipart_upload_and_ranged_reads(fs):
    data = bytes(range(256)) * (12 * 4096 + 3)  # ~12 MiB: three 5 MiB parts
    with fs.open(f"{BUCKET}/big/blob.bin", "wb", block_size=5 * 2**20) as f:
        for i in range(0, len(data), 1 << 20):
            f.write(data[i:i + (1 << 20)])
    assert fs.size(f"{BUCKET}/big/blob.bin") == len(data)
    with fs.open(f"{BUCKET}/big/blob.bin", "rb", block_size=2**20) as f:
        f.seek(7_000_001)
        assert f.read(100_000) == data[7_000_001:7_100_001]
        f.seek(-10, 2)
        assert f.read() == data[-10:]
    assert fs.cat_file(f"{BUCKET}/big/blob.bin", start=123, end=456) == data[123:456]
    assert fs.cat(f"{BUCKET}/big/blob.bin") == data


def test_pandas_parquet_round_trip(opts):
    df = _frame()
    url = f"skystore://{BUCKET}/pandas/frame.parquet"
    df.to_parquet(url, storage_options=opts, index=False)
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=opts), df)


def test_pandas_csv_round_trip(opts):
    df = _frame()
    url = f"skystore://{BUCKET}/pandas/frame.csv"
    df.to_csv(url, storage_options=opts, index=False)
    pd.testing.assert_frame_equal(pd.read_csv(url, storage_options=opts), df)


def test_pyarrow_parquet_with_the_filesystem(fs):
    table = pa.table({"k": list(range(1000)), "v": [str(i) * 3 for i in range(1000)]})
    pq.write_table(table, f"{BUCKET}/arrow/one.parquet", filesystem=fs, row_group_size=100)
    assert pq.read_table(f"{BUCKET}/arrow/one.parquet", filesystem=fs).equals(table)
    # a dataset folder of several files, read back with column projection
    pq.write_table(table.slice(0, 400), f"{BUCKET}/arrow/set/a.parquet", filesystem=fs)
    pq.write_table(table.slice(400), f"{BUCKET}/arrow/set/b.parquet", filesystem=fs)
    back = pq.read_table(f"{BUCKET}/arrow/set", filesystem=fs, columns=["k"]).sort_by("k")
    assert back.column("k").to_pylist() == list(range(1000))
    with fs.open(f"{BUCKET}/arrow/one.parquet", "rb") as f:
        assert pq.ParquetFile(f).metadata.num_row_groups == 10


def test_duckdb_reads_and_writes(fs):
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    try:
        con.register_filesystem(fs)
        con.execute(f"COPY (SELECT range AS id, 'name ' || range AS name FROM range(300)) "
                    f"TO 'skystore://{BUCKET}/duck/t.parquet' (FORMAT parquet)")
        con.execute(f"COPY (SELECT range AS id, range * 2 AS twice FROM range(40)) "
                    f"TO 'skystore://{BUCKET}/duck/t.csv' (FORMAT csv, HEADER)")
        parquet = f"read_parquet('skystore://{BUCKET}/duck/t.parquet')"
        assert con.execute(f"SELECT count(*), sum(id), max(name) FROM {parquet}").fetchone() == (
            300, sum(range(300)), "name 99")
        assert con.execute(f"SELECT sum(twice) FROM read_csv('skystore://{BUCKET}/duck/t.csv')").fetchone() == (
            2 * sum(range(40)),)
        # files written by others, and a glob over them
        for name, rows in (("x", 10), ("y", 20)):
            with fs.open(f"{BUCKET}/duck/set/{name}.parquet", "wb") as f:
                _frame(rows).to_parquet(f, index=False)
        assert con.execute(f"SELECT count(*) FROM read_parquet('skystore://{BUCKET}/duck/set/*.parquet')"
                           ).fetchone() == (30,)
    finally:
        con.close()


def test_read_from_another_region(opts, gateway):
    other = dict(opts, endpoint_url=gateway.endpoint(OTHER), region=OTHER)
    df = _frame(5)
    df.to_csv(f"skystore://{BUCKET}/regions/x.csv", storage_options=opts, index=False)
    back = pd.read_csv(f"skystore://{BUCKET}/regions/x.csv", storage_options=other)
    pd.testing.assert_frame_equal(back, df)
    assert gateway.has_copy(REGION, BUCKET, "regions/x.csv")  # the base copy, where it was written


def test_region_option_in_the_colon_spelling(opts, gateway):
    """``region="gcp:us-central1"`` reaches the main listener as the dash form in the SigV4 scope, which places
    the write in that region."""
    fs = SkyStoreFileSystem(**dict(opts, endpoint_url=gateway.endpoint(), region="gcp:us-central1"),
                            skip_instance_cache=True)
    assert fs.region == OTHER
    fs.pipe(f"{BUCKET}/colon/x.txt", b"written from gcp")
    assert gateway.has_copy(OTHER, BUCKET, "colon/x.txt") and not gateway.has_copy(REGION, BUCKET, "colon/x.txt")


def test_environment_variables_configure_it(monkeypatch, gateway):
    monkeypatch.setenv("SKYSTORE_ENDPOINT", gateway.endpoint(REGION))
    monkeypatch.setenv("SKYSTORE_ACCESS_KEY", gateway.access_key)
    monkeypatch.setenv("SKYSTORE_SECRET_KEY", gateway.secret_key)
    monkeypatch.setenv("SKYSTORE_REGION", REGION)
    with fsspec.open(f"skystore://{BUCKET}/env/x.txt", "wb") as f:
        f.write(b"from the environment")
    assert fsspec.filesystem("skystore").cat(f"{BUCKET}/env/x.txt") == b"from the environment"


def test_instance_cache_follows_the_environment(monkeypatch):
    monkeypatch.setenv("SKYSTORE_ACCESS_KEY", "ak")
    monkeypatch.setenv("SKYSTORE_SECRET_KEY", "sk")
    monkeypatch.setenv("SKYSTORE_ENDPOINT", "http://127.0.0.1:1")
    first = fsspec.filesystem("skystore")
    monkeypatch.setenv("SKYSTORE_ENDPOINT", "http://127.0.0.1:2")
    second = fsspec.filesystem("skystore")
    assert first is not second
    assert (first.endpoint_url, second.endpoint_url) == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert fsspec.filesystem("skystore") is second  # same settings, same instance
    monkeypatch.setenv("SKYSTORE_ENDPOINT", "http://127.0.0.1:3")
    assert pickle.loads(pickle.dumps(second)).endpoint_url == "http://127.0.0.1:2"  # carries its settings
    assert second.client_kwargs["region_name"] == "us-east-1"  # SKYSTORE_REGION unset


def test_missing_endpoint_is_a_clear_error(monkeypatch):
    for name in ("SKYSTORE_ENDPOINT", "SKYSTORE_ACCESS_KEY", "SKYSTORE_SECRET_KEY", "SKYSTORE_REGION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SkyStoreConfigError, match="SKYSTORE_ENDPOINT"):
        fsspec.filesystem("skystore", key="a", secret="b")
    with pytest.raises(SkyStoreConfigError, match="credentials"):
        fsspec.filesystem("skystore", endpoint_url="http://127.0.0.1:1")


def test_wrong_secret_is_refused(opts):
    bad = SkyStoreFileSystem(**dict(opts, secret="not-the-secret"), skip_instance_cache=True)
    with pytest.raises(PermissionError):
        bad.cat(f"{BUCKET}/pandas/frame.csv")
