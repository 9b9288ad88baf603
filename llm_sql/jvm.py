"""Build and locate the project's JVM jars, compiled with ``javac`` from sources in the repository.

Two jars, built the same way:

- ``llm-sql-catalyst.jar``: the Spark Catalyst rules (``io.llmsql.catalyst``), sources in
  ``optimizer/catalyst/``; ``extension_jar()``.
- ``skystore-hadoop.jar``: the Hadoop ``FileSystem`` for ``skystore://`` (``io.skystore.hadoop``),
  sources in ``skystore_connector/hadoop/``; ``skystore_jar()``.

They are compiled against the jars that ship inside pyspark (no Maven, no network) into a per-user cache::

    ~/.cache/llm-sql/jars/<hash of the jar name + sources + Spark version + javac version>/<jar>

built once under a file lock (several processes may ask at once) and reused afterwards. The jars are
never committed. ``LLM_SQL_CACHE_DIR`` moves the cache root (``$LLM_SQL_CACHE_DIR/jars/...``).

    from llm_sql.jvm import extension_jar, EXTENSION_CLASS
    SparkSession.builder.config("spark.jars", str(extension_jar()))
        .config("spark.sql.extensions", EXTENSION_CLASS)

    from llm_sql.jvm import skystore_spark_conf
    for k, v in skystore_spark_conf(endpoint="http://127.0.0.1:9000", access_key=..., secret_key=...).items():
        builder = builder.config(k, v)      # spark.jars + spark.hadoop.fs.skystore.*
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JAR_NAME = "llm-sql-catalyst.jar"
EXTENSION_CLASS = "io.llmsql.catalyst.LLMSQLExtensions"
OPTIMIZE_CONF = "llm_sql.optimize"

SKYSTORE_JAR_NAME = "skystore-hadoop.jar"
SKYSTORE_FS_CLASS = "io.skystore.hadoop.SkyStoreFileSystem"

# How many times this process ran javac (tests use it to check the cache is reused).
BUILD_COUNT = 0

_INSTALL_HINT = (
    "llm-sql's JVM jars (the Spark Catalyst rules, the skystore:// Hadoop FileSystem) need a Java "
    "compiler (javac, JDK 17+); install one, e.g. `apt-get install openjdk-17-jdk-headless` (Debian/Ubuntu), "
    "or set JAVA_HOME to a JDK. The LLM functions still work without it through the plain UDF path."
)


def sources_dir() -> Path:
    """Folder holding the Java sources (``optimizer/catalyst``, installed beside ``llm_sql``)."""
    beside = Path(__file__).resolve().parent.parent / "optimizer" / "catalyst"
    if beside.is_dir():
        return beside
    import optimizer

    return Path(optimizer.__file__).resolve().parent / "catalyst"


def skystore_sources_dir() -> Path:
    """Folder holding the Java sources of the SkyStore Hadoop FileSystem (``skystore_connector/hadoop``)."""
    beside = Path(__file__).resolve().parent.parent / "skystore_connector" / "hadoop"
    if beside.is_dir():
        return beside
    import skystore_connector

    return Path(skystore_connector.__file__).resolve().parent / "hadoop"


@dataclass(frozen=True)
class _Recipe:
    """One jar: its file name, what it holds (for messages) and where its sources are."""

    jar_name: str
    what: str
    sources_dir: Callable[[], Path]


_CATALYST = _Recipe(JAR_NAME, "the llm-sql Catalyst rules", sources_dir)
_SKYSTORE = _Recipe(SKYSTORE_JAR_NAME, "the SkyStore Hadoop FileSystem", skystore_sources_dir)


def _sources(recipe: _Recipe = _CATALYST) -> list[Path]:
    root = recipe.sources_dir()
    files = sorted(root.rglob("*.java"))
    if not files:
        raise RuntimeError(f"no Java sources of {recipe.what} under {root}")
    return files


def pyspark_jars_dir() -> Path:
    try:
        import pyspark
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("pyspark is not installed: `pip install pyspark`") from e
    jars = Path(pyspark.__file__).resolve().parent / "jars"
    if not jars.is_dir():
        raise RuntimeError(f"pyspark has no jars folder at {jars}")
    return jars


def _javac() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "javac").exists():
        return str(Path(home) / "bin" / "javac")
    found = shutil.which("javac")
    if not found:
        raise RuntimeError("javac not found: " + _INSTALL_HINT)
    return found


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("LLM_SQL_CACHE_DIR")
    if base:
        return Path(base) / "jars"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llm-sql" / "jars"


@functools.lru_cache(maxsize=8)
def _javac_version(javac: str) -> str:
    try:
        ver = subprocess.run([javac, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot run {javac}: {e}; " + _INSTALL_HINT) from e
    return (ver.stdout + ver.stderr).strip()


def _fingerprint(files: list[Path], javac: str, recipe: _Recipe = _CATALYST) -> str:
    import pyspark

    h = hashlib.sha256()
    h.update(recipe.jar_name.encode() + b"\0")  # two jars never share a cache folder
    root = recipe.sources_dir()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    h.update(pyspark.__version__.encode() + b"\0")
    h.update(_javac_version(javac).encode())
    return h.hexdigest()[:16]


def extension_jar(cache_dir: str | os.PathLike | None = None, rebuild: bool = False) -> Path:
    """Path of the compiled Catalyst extension jar, building it on first use (under a file lock)."""
    return _build(_CATALYST, cache_dir, rebuild)


def skystore_jar(cache_dir: str | os.PathLike | None = None, rebuild: bool = False) -> Path:
    """Path of the compiled SkyStore Hadoop FileSystem jar, building it on first use (under a file lock)."""
    return _build(_SKYSTORE, cache_dir, rebuild)


def _build(recipe: _Recipe, cache_dir: str | os.PathLike | None, rebuild: bool) -> Path:
    global BUILD_COUNT
    javac = _javac()
    files = _sources(recipe)
    key = _fingerprint(files, javac, recipe)
    target_dir = _cache_root(cache_dir) / key
    jar = target_dir / recipe.jar_name
    if jar.exists() and not rebuild:
        return jar
    target_dir.mkdir(parents=True, exist_ok=True)
    with open(target_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if jar.exists() and not rebuild:  # another process built it while we waited
                return jar
            with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
                classes = Path(tmp) / "classes"
                classes.mkdir()
                cmd = [javac, "-nowarn", "--release", "17", "-encoding", "UTF-8",
                       "-cp", str(pyspark_jars_dir() / "*"), "-d", str(classes),
                       *map(str, files)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"compiling {recipe.what} failed:\n" + proc.stdout + proc.stderr)
                BUILD_COUNT += 1
                partial = Path(tmp) / recipe.jar_name
                with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
                    z.writestr("META-INF/MANIFEST.MF",
                               "Manifest-Version: 1.0\nCreated-By: llm-sql\n\n")
                    for cls in sorted(classes.rglob("*.class")):
                        z.write(cls, str(cls.relative_to(classes)))
                os.replace(partial, jar)  # atomic: readers never see half a jar
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return jar


def spark_conf(cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The two settings that load the extension (for a builder or spark-defaults.conf)."""
    return {"spark.jars": str(extension_jar(cache_dir)), "spark.sql.extensions": EXTENSION_CLASS}


def add_to_driver_classpath(jar: str | os.PathLike | None = None) -> bool:
    """Make the extension loadable by a driver JVM that is already running.

    ``spark.jars`` reaches the driver's class path only when PySpark launches the JVM; a session built
    later in the same process (after another one was stopped) would silently skip
    ``spark.sql.extensions`` (class not found). This adds the jar to the driver's class loader, so call
    it before ``SparkSession.builder...getOrCreate()``. Returns False when no JVM runs yet (then
    ``spark.jars`` does the job) or the loader cannot take it.
    """
    try:
        from pyspark import SparkContext
    except ImportError:  # pragma: no cover
        return False
    gateway = SparkContext._gateway
    if gateway is None:
        return False
    path = Path(jar) if jar is not None else extension_jar()
    j = gateway.jvm
    url = j.java.io.File(str(path)).toURI().toURL()
    loader = j.Thread.currentThread().getContextClassLoader()
    try:
        if any(u.toString() == url.toString() for u in loader.getURLs()):
            return True
        loader.addURL(url)  # org.apache.spark.util.MutableURLClassLoader
    except Exception:  # noqa: BLE001 - a loader without addURL/getURLs
        return False
    return True


# SkyStore settings: Hadoop key suffix -> environment variable read when no value is given
# (the Java FileSystem reads the same variables when its keys are unset).
_SKYSTORE_ENV = {
    "endpoint": "SKYSTORE_ENDPOINT",
    "access.key": "SKYSTORE_ACCESS_KEY",
    "secret.key": "SKYSTORE_SECRET_KEY",
    "region": "SKYSTORE_REGION",
}


def skystore_hadoop_conf(endpoint: str | None = None, access_key: str | None = None,
                         secret_key: str | None = None, region: str | None = None,
                         multipart_size: int | str | None = None, *, prefix: str = "",
                         disable_cache: bool = False) -> dict[str, str]:
    """Hadoop settings of the ``skystore://`` FileSystem (``fs.skystore.*``), each key behind ``prefix``.

    ``prefix="spark.hadoop."`` gives Spark settings. Unset values fall back to ``SKYSTORE_ENDPOINT``,
    ``SKYSTORE_ACCESS_KEY``, ``SKYSTORE_SECRET_KEY``, ``SKYSTORE_REGION`` and are left out when those are
    unset too. ``disable_cache`` stops Hadoop from reusing one instance per bucket (for tests whose
    gateway changes between sessions of one JVM).
    """
    given = {"endpoint": endpoint, "access.key": access_key, "secret.key": secret_key, "region": region}
    conf = {f"{prefix}fs.skystore.impl": SKYSTORE_FS_CLASS}
    for name, value in given.items():
        value = value if value is not None else os.environ.get(_SKYSTORE_ENV[name])
        if value:
            conf[f"{prefix}fs.skystore.{name}"] = str(value)
    if multipart_size is not None:
        conf[f"{prefix}fs.skystore.multipart.size"] = str(multipart_size)
    if disable_cache:
        conf[f"{prefix}fs.skystore.impl.disable.cache"] = "true"
    return conf


def skystore_spark_conf(endpoint: str | None = None, access_key: str | None = None,
                        secret_key: str | None = None, region: str | None = None,
                        multipart_size: int | str | None = None, *, disable_cache: bool = False,
                        cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Spark settings that mount ``skystore://``: the jar on ``spark.jars`` and ``spark.hadoop.fs.skystore.*``.

    When merging with other jars, join the ``spark.jars`` values with commas. For a JVM that is already
    running, also call ``add_to_driver_classpath(skystore_jar())`` before building the session.
    """
    conf = {"spark.jars": str(skystore_jar(cache_dir))}
    conf.update(skystore_hadoop_conf(endpoint, access_key, secret_key, region, multipart_size,
                                     prefix="spark.hadoop.", disable_cache=disable_cache))
    return conf


def skystore_for_session(settings: dict[str, Any] | None = None) -> tuple[Path, dict[str, str]]:
    """What a Spark session needs to mount ``skystore://``: the jar (built, and added to a driver JVM that is
    already running) and the ``fs.skystore.*`` Hadoop settings, from ``settings`` (the arguments of
    ``skystore_hadoop_conf``: endpoint, access_key, secret_key, region, multipart_size) else the environment."""
    jar = skystore_jar()
    add_to_driver_classpath(jar)
    return jar, skystore_hadoop_conf(**(settings or {}))
