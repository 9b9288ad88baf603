"""Build and locate the JVM jar of the Spark Catalyst rules (``io.llmsql.catalyst``).

The Java sources live in ``optimizer/catalyst/``. They are compiled with ``javac`` against the jars
that ship inside pyspark (no Maven, no network) into a per-user cache::

    ~/.cache/llm-sql/jars/<hash of the sources + Spark version + javac version>/llm-sql-catalyst.jar

built once under a file lock (several processes may ask at once) and reused afterwards. The jar is
never committed. ``LLM_SQL_CACHE_DIR`` moves the cache root (``$LLM_SQL_CACHE_DIR/jars/...``).

    from llm_sql.jvm import extension_jar, EXTENSION_CLASS
    SparkSession.builder.config("spark.jars", str(extension_jar()))
        .config("spark.sql.extensions", EXTENSION_CLASS)
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
from pathlib import Path

JAR_NAME = "llm-sql-catalyst.jar"
EXTENSION_CLASS = "io.llmsql.catalyst.LLMSQLExtensions"
OPTIMIZE_CONF = "llm_sql.optimize"

# How many times this process ran javac (tests use it to check the cache is reused).
BUILD_COUNT = 0

_INSTALL_HINT = (
    "the Spark extension needs a Java compiler (javac, JDK 17+) to build its Catalyst rules; "
    "install one, e.g. `apt-get install openjdk-17-jdk-headless` (Debian/Ubuntu), "
    "or set JAVA_HOME to a JDK. The LLM functions still work without it through the plain UDF path."
)


def sources_dir() -> Path:
    """Folder holding the Java sources (``optimizer/catalyst``, installed beside ``llm_sql``)."""
    beside = Path(__file__).resolve().parent.parent / "optimizer" / "catalyst"
    if beside.is_dir():
        return beside
    import optimizer

    return Path(optimizer.__file__).resolve().parent / "catalyst"


def _sources() -> list[Path]:
    root = sources_dir()
    files = sorted(root.rglob("*.java"))
    if not files:
        raise RuntimeError(f"no Java sources of the Catalyst rules under {root}")
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


def _fingerprint(files: list[Path], javac: str) -> str:
    import pyspark

    h = hashlib.sha256()
    root = sources_dir()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    h.update(pyspark.__version__.encode() + b"\0")
    h.update(_javac_version(javac).encode())
    return h.hexdigest()[:16]


def extension_jar(cache_dir: str | os.PathLike | None = None, rebuild: bool = False) -> Path:
    """Path of the compiled extension jar, building it on first use (under a file lock)."""
    global BUILD_COUNT
    javac = _javac()
    files = _sources()
    key = _fingerprint(files, javac)
    target_dir = _cache_root(cache_dir) / key
    jar = target_dir / JAR_NAME
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
                    raise RuntimeError(
                        "compiling the llm-sql Catalyst rules failed:\n" + proc.stdout + proc.stderr)
                BUILD_COUNT += 1
                partial = Path(tmp) / JAR_NAME
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
