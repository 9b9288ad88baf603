"""The Java Hadoop FileSystem for skystore:// (io.skystore.hadoop, built by llm_sql.jvm).

1. Its SigV4 signer gives botocore's Authorization header for the same request, date and credentials
   (the signer's ``main`` is run with ``java``; no Spark needed).
2. The FileSystem itself, called through the py4j JVM of a local Spark session, against the real gateway:
   directories (implied and marker objects), listing, seek and positioned reads, multipart uploads (and
   their abort when the gateway refuses one), rename and delete as FileOutputCommitter uses them, errors.
3. Spark writing and reading Parquet and CSV through skystore:// with the default FileOutputCommitter:
   error-if-exists, overwrite, append, partitioned output; ``llm_sql.spark_session(skystore=...)``.

The Spark session is built like the other Spark modules' (getOrCreate in one JVM per pytest process): the jar
is also added to the running driver's class loader, and the fs.skystore.* keys go on the SparkContext's
Hadoop configuration, so this module passes alone and after tests/test_catalyst.py.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
from unittest import mock

import pytest

pytest.importorskip("pyspark")
botocore = pytest.importorskip("botocore")
if shutil.which("javac") is None or shutil.which("java") is None:
    pytest.skip("javac/java are not installed (apt-get install openjdk-17-jdk-headless)", allow_module_level=True)

import botocore.auth  # noqa: E402
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.utils import percent_encode  # noqa: E402

from llm_sql import jvm  # noqa: E402

REGION = "aws-us-east-1"
BUCKET = "warehouse"
MiB = 1 << 20


@pytest.fixture(scope="module")
def jar():
    return jvm.skystore_jar()


# ---------------------------------------------------------------------------------------------- the signer

ACCESS, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
WHEN = datetime.datetime(2024, 5, 17, 8, 30, 5)
AMZ_DATE = "20240517T083005Z"

LOOPBACK, REMOTE = "http://127.0.0.1:9000", "https://gateway.example.com"
CASES = [
    # (method, bucket, key, query params, extra headers, body, region, endpoint, sign the payload)
    ("GET", "data", "t/part-00000.parquet", {}, {"Range": "bytes=100-1123"}, b"", "aws-us-east-1", LOOPBACK, True),
    ("PUT", "data", "dir with spaces/ünïcödé=1/a+b&c.csv", {}, {}, b"a,b\n1,2\n", "gcp-us-central1", LOOPBACK,
     True),
    ("GET", "data", "", {"list-type": "2", "prefix": "out/_temporary/0/", "delimiter": "/",
                         "continuation-token": "a/b+c=d==", "max-keys": "1000"}, {}, b"", "us-east-1", LOOPBACK, True),
    ("POST", "data", "big/file.bin", {"uploads": ""}, {}, b"", "eu-west-1", LOOPBACK, True),
    ("PUT", "data", "big/file.bin", {"partNumber": "2", "uploadId": "u/1+2=="}, {}, bytes(range(256)) * 9,
     "us-east-1", LOOPBACK, True),
    ("DELETE", "my.bucket-1", "k~tilde*star(paren)", {}, {}, b"", "azure-eastus", LOOPBACK, True),
    ("PUT", "data", "copy/target", {}, {"x-amz-copy-source": "data/copy/source%20x"}, b"", "us-east-1", LOOPBACK,
     True),
    ("POST", "data", "", {"delete": ""}, {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "Content-Type": "application/xml"},
     b"<Delete/>", "us-east-1", LOOPBACK, True),
    ("PUT", "b", "k/v.bin", {}, {"Content-MD5": "dGVzdA=="}, b"x" * 1000, "us-east-1", REMOTE, False),
]


def _payload_hash(case):
    return hashlib.sha256(case[5]).hexdigest() if case[8] else "UNSIGNED-PAYLOAD"


def _headers(case):
    host = case[7].split("://", 1)[1]
    return {"host": host, "x-amz-date": AMZ_DATE, "x-amz-content-sha256": _payload_hash(case), **case[4]}


@pytest.fixture(scope="module")
def java_signed(jar):
    """(path, canonical query, Authorization) of every case, signed by one run of the Java signer."""
    cmd = ["java", "-cp", str(jar), "io.skystore.hadoop.SigV4Signer"]
    for i, case in enumerate(CASES):
        method, bucket, key, params, _, _, region, _, _ = case
        cmd += (["--"] if i else []) + [ACCESS, SECRET, region, method, bucket, key, _payload_hash(case)]
        for name, value in params.items():
            cmd += ["-q", f"{name}={value}"]
        for name, value in _headers(case).items():
            cmd += ["-h", f"{name}:{value}"]
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout.splitlines()
    assert len(lines) == 3 * len(CASES)
    return [tuple(lines[i:i + 3]) for i in range(0, len(lines), 3)]


def _botocore_sign(case, path):
    method, _, _, params, extra, body, region, endpoint, sign_payload = case
    request = AWSRequest(method=method, url=endpoint + path, params=params, headers=dict(extra), data=body)
    if not sign_payload:  # what boto3 does for a streamed upload over https with a checksum header
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
        request.context["has_streaming_input"] = True
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda: WHEN):
        S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", region).add_auth(request)
    return request.headers["Authorization"], request.headers["X-Amz-Content-SHA256"]


def _boto3_path(bucket, key):
    # how botocore's REST serializer fills /{Bucket}/{Key+}
    return "/" + percent_encode(bucket, safe="") + ("/" + percent_encode(key, safe="/~") if key else "")


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_java_signature_matches_botocore(java_signed, index):
    case = CASES[index]
    path, query, java_auth = java_signed[index]
    assert path == _boto3_path(case[1], case[2])
    boto_auth, boto_hash = _botocore_sign(case, path)
    assert boto_hash == _payload_hash(case)
    assert java_auth == boto_auth
    for name in case[3]:  # the query the client sends is the canonical one
        assert percent_encode(name, safe="-_.~") + "=" in query


def test_jar_holds_the_file_system_and_is_cached(jar):
    import zipfile

    assert jar.name == jvm.SKYSTORE_JAR_NAME and jar.exists()
    names = zipfile.ZipFile(jar).namelist()
    assert "io/skystore/hadoop/SkyStoreFileSystem.class" in names
    before = jvm.BUILD_COUNT
    assert jvm.skystore_jar() == jar and jvm.BUILD_COUNT == before
    assert jar.parent != jvm.extension_jar().parent  # the two jars never share a cache folder


def test_conf_helpers():
    conf = jvm.skystore_spark_conf("http://127.0.0.1:9", "ak", "sk", REGION, multipart_size="16M",
                                   disable_cache=True)
    assert conf["spark.hadoop.fs.skystore.impl"] == jvm.SKYSTORE_FS_CLASS
    assert conf["spark.hadoop.fs.skystore.endpoint"] == "http://127.0.0.1:9"
    assert conf["spark.hadoop.fs.skystore.multipart.size"] == "16M"
    assert conf["spark.hadoop.fs.skystore.impl.disable.cache"] == "true"
    assert conf["spark.jars"].endswith(jvm.SKYSTORE_JAR_NAME)
    with mock.patch.dict(os.environ, {"SKYSTORE_ENDPOINT": "http://env:1", "SKYSTORE_REGION": "r-1"}):
        plain = jvm.skystore_hadoop_conf()
    assert plain["fs.skystore.endpoint"] == "http://env:1" and plain["fs.skystore.region"] == "r-1"


# ------------------------------------------------------------------------------- the gateway and Spark

@pytest.fixture(scope="module")
def gateway():
    testing = pytest.importorskip("skystore_connector.testing")
    with testing.local_gateway(regions=[REGION, "gcp-us-central1"]) as gw:
        gw.client(REGION).create_bucket(Bucket=BUCKET)
        yield gw


@pytest.fixture(scope="module")
def spark(jar, gateway, tmp_path_factory):
    from pyspark.sql import SparkSession

    # A gateway per module: instances cached per bucket would keep an earlier module's endpoint.
    hadoop = jvm.skystore_hadoop_conf(gateway.endpoint(REGION), gateway.access_key, gateway.secret_key, REGION,
                                      disable_cache=True)
    jvm.add_to_driver_classpath(jar)  # a JVM started by an earlier module never reads spark.jars again
    builder = (SparkSession.builder.master("local[2]").appName("skystore-hadoop-test")
               .config("spark.jars", str(jar)).config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "2")
               # SQL on paths still opens the catalog: keep its warehouse folder out of the working tree
               .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("warehouse"))))
    for key, value in hadoop.items():
        builder = builder.config("spark.hadoop." + key, value)
    session = builder.getOrCreate()
    conf = session._jsc.hadoopConfiguration()  # a session that was already running keeps its own
    for key, value in hadoop.items():
        conf.set(key, value)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def hfs(spark):
    j = spark._jvm
    return j.org.apache.hadoop.fs.Path(f"skystore://{BUCKET}/").getFileSystem(spark._jsc.hadoopConfiguration())


def _path(spark, key):
    return spark._jvm.org.apache.hadoop.fs.Path(f"skystore://{BUCKET}/{key}")


def _write(hfs, spark, key, data: bytes, overwrite=True):
    out = hfs.create(_path(spark, key), overwrite)
    for i in range(0, len(data), MiB):  # py4j moves byte arrays; keep each call small
        out.write(bytearray(data[i:i + MiB]))
    out.close()


def _read_at(spark, stream, position, n, direct=False):
    # py4j copies Java byte arrays into Python: read into a ByteBuffer that stays on the Java side
    nio = spark._jvm.java.nio.ByteBuffer
    buf = nio.allocateDirect(n) if direct else nio.allocate(n)
    stream.readFully(position, buf)
    if direct:
        heap = nio.allocate(n)
        heap.put(buf.flip())
        buf = heap
    return bytes(buf.array())


def _java_error(excinfo) -> str:
    return excinfo.value.java_exception.getClass().getName()


def _keys(gateway, prefix):
    pages = gateway.client(REGION).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _names(statuses):
    return sorted((s.getPath().getName(), bool(s.isDirectory())) for s in statuses)


def test_file_system_is_mounted(hfs):
    assert hfs.getClass().getName() == jvm.SKYSTORE_FS_CLASS
    assert hfs.getScheme() == "skystore" and hfs.getUri().toString() == f"skystore://{BUCKET}"


def test_directories_listing_and_status(hfs, spark, gateway):
    from py4j.protocol import Py4JJavaError

    assert hfs.mkdirs(_path(spark, "ls/empty/deep"))
    assert _keys(gateway, "ls/") == ["ls/empty/deep/"]  # one marker; parents are implied
    _write(hfs, spark, "ls/a.txt", b"alpha")
    _write(hfs, spark, "ls/sub/b.txt", b"beta!")
    assert _names(hfs.listStatus(_path(spark, "ls"))) == [("a.txt", False), ("empty", True), ("sub", True)]
    assert _names(hfs.listStatus(_path(spark, "ls/empty/deep"))) == []
    status = hfs.getFileStatus(_path(spark, "ls/sub/b.txt"))
    assert status.isFile() and status.getLen() == 5 and status.getModificationTime() > 0
    assert hfs.getFileStatus(_path(spark, "ls/sub")).isDirectory()  # implied by a key below it
    assert hfs.getFileStatus(_path(spark, "ls/empty/deep")).isDirectory()  # the marker
    assert hfs.getFileStatus(_path(spark, "")).isDirectory()
    assert _names(hfs.listStatus(_path(spark, "ls/a.txt"))) == [("a.txt", False)]
    assert str(hfs.listStatus(_path(spark, "ls/sub"))[0].getPath()) == f"skystore://{BUCKET}/ls/sub/b.txt"
    assert not hfs.exists(_path(spark, "ls/nothing"))
    with pytest.raises(Py4JJavaError) as e:
        hfs.listStatus(_path(spark, "ls/nothing"))
    assert _java_error(e) == "java.io.FileNotFoundException"
    with pytest.raises(Py4JJavaError) as e:
        hfs.mkdirs(_path(spark, "ls/a.txt"))
    assert _java_error(e) == "org.apache.hadoop.fs.FileAlreadyExistsException"
    with pytest.raises(Py4JJavaError) as e:
        hfs.mkdirs(_path(spark, "ls/a.txt/below"))
    assert _java_error(e) == "org.apache.hadoop.fs.ParentNotDirectoryException"


def test_seek_and_positioned_reads(hfs, spark):
    from py4j.protocol import Py4JJavaError

    data = bytes((i * 7 + i // 251) % 256 for i in range(3 * MiB + 11))
    _write(hfs, spark, "reads/blob.bin", data)
    stream = hfs.open(_path(spark, "reads/blob.bin"))
    try:
        assert stream.read() == data[0]
        stream.seek(2 * MiB + 5)
        assert stream.getPos() == 2 * MiB + 5
        assert stream.read() == data[2 * MiB + 5]
        assert _read_at(spark, stream, 123_456, 70_000) == data[123_456:193_456]
        assert stream.getPos() == 2 * MiB + 6  # positioned reads leave the position alone
        assert _read_at(spark, stream, len(data) - 4, 4, direct=True) == data[-4:]
        assert stream.hasCapability("in:preadbytebuffer")
        stream.seek(len(data))
        assert stream.read() == -1
        with pytest.raises(Py4JJavaError) as e:
            stream.seek(len(data) + 1)
        assert _java_error(e) == "java.io.EOFException"
        with pytest.raises(Py4JJavaError) as e:
            _read_at(spark, stream, len(data) - 2, 4)
        assert _java_error(e) == "java.io.EOFException"
    finally:
        stream.close()
    whole = spark._jvm.org.apache.commons.io.IOUtils.toByteArray(hfs.open(_path(spark, "reads/blob.bin")))
    assert bytes(whole) == data


def test_large_file_goes_up_in_parts(hfs, spark, gateway):
    data = os.urandom(11 * MiB + 17)
    _write(hfs, spark, "big/eleven.bin", data)  # 8 MiB parts by default: two parts
    head = gateway.client(REGION).head_object(Bucket=BUCKET, Key="big/eleven.bin")
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"').endswith("-2")
    body = gateway.client(REGION).get_object(Bucket=BUCKET, Key="big/eleven.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert not gateway.client(REGION).list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    small = b"fits in one put"
    _write(hfs, spark, "big/small.bin", small)
    assert "-" not in gateway.client(REGION).head_object(Bucket=BUCKET, Key="big/small.bin")["ETag"]


def test_failed_multipart_upload_is_aborted(spark):
    from py4j.protocol import Py4JJavaError

    testing = pytest.importorskip("skystore_connector.testing")
    # A gateway whose parts must be 6 MiB: our 5 MiB parts go up, then CompleteMultipartUpload is refused.
    with testing.local_gateway(regions=[REGION], min_part_size=6 * MiB) as strict:
        strict.client(REGION).create_bucket(Bucket="strict")
        j = spark._jvm
        conf = j.org.apache.hadoop.conf.Configuration(False)
        for key, value in jvm.skystore_hadoop_conf(strict.endpoint(REGION), strict.access_key, strict.secret_key,
                                                   REGION, multipart_size="5M").items():
            conf.set(key, value)
        fs = j.org.apache.hadoop.fs.FileSystem.newInstance(j.java.net.URI("skystore://strict/"), conf)
        try:
            out = fs.create(j.org.apache.hadoop.fs.Path("skystore://strict/parts.bin"), True)
            chunk = bytearray(os.urandom(MiB))
            for _ in range(11):
                out.write(chunk)
            with pytest.raises(Py4JJavaError, match="EntityTooSmall"):
                out.close()
        finally:
            fs.close()
        client = strict.client(REGION)
        assert not client.list_multipart_uploads(Bucket="strict").get("Uploads")  # aborted
        assert client.list_objects_v2(Bucket="strict").get("KeyCount", 0) == 0


def test_create_without_overwrite_refuses_existing(hfs, spark):
    from py4j.protocol import Py4JJavaError

    _write(hfs, spark, "create/x", b"1")
    with pytest.raises(Py4JJavaError) as e:
        hfs.create(_path(spark, "create/x"), False)
    assert _java_error(e) == "org.apache.hadoop.fs.FileAlreadyExistsException"
    _write(hfs, spark, "create/x", b"22", overwrite=True)
    assert hfs.getFileStatus(_path(spark, "create/x")).getLen() == 2
    with pytest.raises(Py4JJavaError) as e:
        hfs.create(_path(spark, "create"), True)  # a directory
    assert _java_error(e) == "org.apache.hadoop.fs.FileAlreadyExistsException"


def test_rename_files_and_directories(hfs, spark, gateway):
    for key in ("mv/src/a", "mv/src/deeper/b", "mv/file", "mv/other"):
        _write(hfs, spark, key, key.encode())
    hfs.mkdirs(_path(spark, "mv/src/empty"))
    assert hfs.rename(_path(spark, "mv/src"), _path(spark, "mv/dst"))  # a new name
    assert _keys(gateway, "mv/dst/") == ["mv/dst/a", "mv/dst/deeper/b", "mv/dst/empty/"]
    assert not hfs.exists(_path(spark, "mv/src"))
    assert hfs.rename(_path(spark, "mv/file"), _path(spark, "mv/dst"))  # into a directory
    assert hfs.exists(_path(spark, "mv/dst/file")) and not hfs.exists(_path(spark, "mv/file"))
    assert not hfs.rename(_path(spark, "mv/other"), _path(spark, "mv/dst/a"))  # never overwrite a file
    assert not hfs.rename(_path(spark, "mv/missing"), _path(spark, "mv/x"))
    assert not hfs.rename(_path(spark, "mv/dst"), _path(spark, "mv/dst/deeper/inside"))  # into itself
    assert hfs.rename(_path(spark, "mv/other"), _path(spark, "mv/renamed"))
    assert gateway.client(REGION).get_object(Bucket=BUCKET, Key="mv/renamed")["Body"].read() == b"mv/other"


def test_delete_and_parents_stay(hfs, spark, gateway):
    from py4j.protocol import Py4JJavaError

    _write(hfs, spark, "rm/keep/one/f1", b"1")
    _write(hfs, spark, "rm/keep/one/f2", b"2")
    with pytest.raises(Py4JJavaError) as e:
        hfs.delete(_path(spark, "rm/keep/one"), False)
    assert _java_error(e) == "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException"
    assert hfs.delete(_path(spark, "rm/keep/one"), True)
    assert not hfs.exists(_path(spark, "rm/keep/one"))
    assert hfs.getFileStatus(_path(spark, "rm/keep")).isDirectory()  # a marker keeps the parent
    assert _keys(gateway, "rm/") == ["rm/keep/"]
    assert not hfs.delete(_path(spark, "rm/nothing"), True)
    assert not hfs.delete(_path(spark, ""), True)  # never the whole bucket


def test_configuration_errors(spark, gateway):
    from py4j.protocol import Py4JJavaError

    j = spark._jvm
    uri = j.java.net.URI(f"skystore://{BUCKET}/")
    conf = j.org.apache.hadoop.conf.Configuration(False)
    conf.set("fs.skystore.impl", jvm.SKYSTORE_FS_CLASS)
    if not os.environ.get("SKYSTORE_ENDPOINT"):  # the JVM inherited the environment at its start
        with pytest.raises(Py4JJavaError, match="fs.skystore.endpoint"):
            j.org.apache.hadoop.fs.FileSystem.newInstance(uri, conf)
    for key, value in jvm.skystore_hadoop_conf(gateway.endpoint(REGION), gateway.access_key, "wrong-secret",
                                               REGION).items():
        conf.set(key, value)
    bad = j.org.apache.hadoop.fs.FileSystem.newInstance(uri, conf)
    with pytest.raises(Py4JJavaError) as e:
        bad.getFileStatus(_path(spark, "anything"))
    assert _java_error(e) == "java.nio.file.AccessDeniedException"
    bad.close()


# ---------------------------------------------------------------------------------------------- Spark

def _rows(df):
    return sorted(tuple(r) for r in df.collect())


def test_spark_parquet_write_read_overwrite_append(spark, gateway):
    from pyspark.errors import AnalysisException

    url = f"skystore://{BUCKET}/spark/table"
    df = spark.range(200).selectExpr("id", "cast(id * 3 as string) AS label").repartition(2)
    df.write.parquet(url)
    assert _rows(spark.read.parquet(url)) == _rows(df)
    keys = _keys(gateway, "spark/table/")
    assert "spark/table/_SUCCESS" in keys and not [k for k in keys if "_temporary" in k]
    parts = [k for k in keys if k.endswith(".parquet")]
    assert len(parts) == 2 and all(gateway.has_copy(REGION, BUCKET, k) for k in parts)
    with pytest.raises(AnalysisException, match="already exists"):
        df.write.parquet(url)

    smaller = spark.range(10).selectExpr("id", "'new' AS label").coalesce(1)
    smaller.write.mode("overwrite").parquet(url)
    assert _rows(spark.read.parquet(url)) == _rows(smaller)
    assert not set(parts) & set(_keys(gateway, "spark/table/"))  # the old files are gone

    smaller.write.mode("append").parquet(url)
    assert spark.read.parquet(url).count() == 20
    assert spark.sql(f"SELECT count(DISTINCT id) FROM parquet.`{url}`").first()[0] == 10


def test_spark_partitioned_parquet_and_csv(spark, gateway):
    url = f"skystore://{BUCKET}/spark/by_kind"
    df = spark.range(60).selectExpr("id", "CASE WHEN id % 3 = 0 THEN 'a b' ELSE 'c=d' END AS kind")
    df.write.partitionBy("kind").parquet(url)
    assert {k.split("/")[2] for k in _keys(gateway, "spark/by_kind/") if k.endswith(".parquet")} == {
        "kind=a b", "kind=c%3Dd"}  # Spark's partition-value escaping, kept as is in the keys
    back = spark.read.parquet(url)
    assert _rows(back.select("id", "kind")) == _rows(df)
    assert back.where("kind = 'a b'").count() == 20

    csv_url = f"skystore://{BUCKET}/spark/csv"
    people = spark.createDataFrame([(1, "Ada, Countess", 36.5), (2, 'Quote "Q"', None)],
                                   "id int, name string, x double")
    people.write.option("header", True).csv(csv_url)
    again = spark.read.option("header", True).schema("id int, name string, x double").csv(csv_url)
    assert _rows(again) == _rows(people)


def test_spark_session_helper_mounts_skystore(spark, gateway, monkeypatch):
    from llm_sql import spark_mode

    monkeypatch.setattr(spark_mode, "register", lambda session, **options: session)  # no LLM backend here
    url = f"skystore://{BUCKET}/spark/helper"
    spark.range(5).write.parquet(url)
    session = spark_mode.spark_session(master="local[2]", skystore={
        "endpoint": gateway.endpoint(REGION), "access_key": gateway.access_key, "secret_key": gateway.secret_key,
        "region": REGION})
    assert session is spark  # getOrCreate: the running session, its Hadoop settings updated
    hadoop = session._jsc.hadoopConfiguration()
    assert hadoop.get("fs.skystore.impl") == jvm.SKYSTORE_FS_CLASS
    assert hadoop.get("fs.skystore.endpoint") == gateway.endpoint(REGION)
    assert str(jvm.skystore_jar()) in session.conf.get("spark.jars", "")
    assert session.read.parquet(url).count() == 5
