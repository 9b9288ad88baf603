"""Fixtures shared by the top-level tests."""
from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture()
def env_without_this_python(tmp_path):
    """The environment with this interpreter's directory taken off PATH and, first on it, a ``python3`` that
    fails, as IDEs and cron start Python: a Spark worker started from PATH instead of this interpreter fails."""
    decoy = tmp_path / "decoy-bin"
    decoy.mkdir(exist_ok=True)
    for name in ("python3", "python"):
        (decoy / name).write_text("#!/bin/sh\necho 'decoy python3 from PATH started' >&2\nexit 3\n")
        (decoy / name).chmod(0o755)
    here = os.path.dirname(sys.executable)
    rest = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and os.path.abspath(d) != here]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(decoy), *rest])
    return env


@pytest.fixture()
def own_answers():
    """``own_answers(model_dir, rows, instruction=, names=, max_tokens=)``: what that checkpoint's own engine answers
    to ``llm``, evaluated plainly (no dedup, no reordering, no cache): the reference for a call routed to it."""
    def answers(model_dir, rows, instruction="Summarise", names=("review",), max_tokens=4):
        from engine_backend.backends import make_backend
        from udf.api import EvalSettings
        from udf.batch import evaluate
        from udf.functions import make_call

        backend = make_backend("embedded", model=model_dir)
        try:
            settings = EvalSettings(dedup=False, reorder=False, result_cache=False, progress=False,
                                    defaults={"max_tokens": max_tokens})
            return evaluate(make_call("llm", instruction=instruction, field_names=names), rows, backend,
                            settings=settings).values
        finally:
            backend.close()

    return answers


@pytest.fixture(scope="session")
def extension_spark():
    """``with extension_spark(model_dir, app_name, **options) as spark``: a local[2] Spark session with the Catalyst
    extension and the LLM functions registered on ``model_dir`` (no result cache, no progress bar, two shuffle
    partitions; ``options`` go to ``register``), whose node server is stopped and session ended afterwards. Skips
    where pyspark >= 4.1, java or javac is missing, or another session without the extension runs in this process."""
    import contextlib
    import shutil

    @contextlib.contextmanager
    def session(model_dir: str, app_name: str, **options):
        pytest.importorskip("pyspark")
        from pyspark.sql import functions as F

        if not hasattr(F, "arrow_udf") or shutil.which("javac") is None or shutil.which("java") is None:
            pytest.skip("needs pyspark >= 4.1, java and javac")
        import llm_sql
        from llm_sql import spark_mode

        spark = llm_sql.spark_session(model=model_dir, master="local[2]", app_name=app_name, skystore=False,
                                      **{"cache": False, "progress": False, **options},
                                      conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                                            "spark.sql.shuffle.partitions": "2"})
        if not spark_mode.extension_loaded(spark):
            pytest.skip("another SparkSession without the llm-sql extension is still running in this process")
        try:
            yield spark
        finally:
            spark_mode.stop(spark)
            spark.stop()

    return session


@pytest.fixture(scope="module")
def node_server(spark):
    """A client (``OpenAIBackend``) of the test module's Spark session's node engine server: to ask the engine the
    workers used (a plain evaluation, what it ran)."""
    from engine_backend.backends import make_backend
    from llm_sql import spark_mode

    info = spark_mode.server_info(spark)
    backend = make_backend("openai", base_url=info["url"], api_key=info["token"])
    yield backend
    backend.close()
