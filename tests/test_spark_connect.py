"""Spark Connect clients get the Catalyst rules and the LLM functions.

A local Spark Connect server (``SparkSession.builder.remote("local[2]")``) is started with the extension in a
fresh process (a classic SparkContext of an earlier test module must not be in the way); ``llm_sql.register``
works on the Connect session, the optimised plan holds the dedup aggregate, and the rows equal the rules-off
evaluation. A tiny random-weight model answers nonsense; what is checked is the plan and that the results
do not change.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("pyspark")
pytest.importorskip("grpc", reason="Spark Connect needs pyspark[connect] (grpcio, grpcio-status, ...)")
if shutil.which("javac") is None or shutil.which("java") is None:
    pytest.skip("the Catalyst extension needs a JDK (java and javac)", allow_module_level=True)

ROWS = [(1, "crisp and hoppy"), (2, "flat and sour"), (3, "crisp and hoppy"), (4, None), (5, "flat and sour"),
        (6, "roasty, coffee notes")]

_CONNECT = r"""
import contextlib, io, json, sys, warnings
warnings.simplefilter("ignore")
import llm_sql
from llm_sql import jvm, spark_mode
from pyspark.sql import SparkSession

spark = (SparkSession.builder.remote("local[2]").config("spark.jars", str(jvm.extension_jar()))
         .config("spark.sql.extensions", jvm.EXTENSION_CLASS).config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", "2").getOrCreate())
assert spark_mode.is_connect(spark) and spark_mode.extension_loaded(spark)
llm_sql.register(spark, model=sys.argv[1], max_tokens=3, cache=False)
spark.createDataFrame(json.loads(sys.argv[2]), "id int, review string").createOrReplaceTempView("reviews")
query = "SELECT id, llm('Summarise', struct(review)) AS s FROM reviews"
out = {}
for flag in ("true", "false"):
    spark.conf.set("llm_sql.optimize", flag)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        spark.sql(query).explain(True)
    out[flag + "_plan"] = buf.getvalue().split("== Optimized Logical Plan ==")[1].split("== Physical Plan ==")[0]
    out[flag] = sorted(map(repr, spark.sql(query).collect()))
try:
    llm_sql.last_stats(spark)
except RuntimeError as e:
    out["stats_error"] = str(e)
spark_mode.stop(spark)
spark.stop()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_spark_connect_client_gets_the_rules_and_the_functions(tmp_path, env_without_this_python):
    from engine_backend.testing import make_tiny_model

    model = str(make_tiny_model(tmp_path / "tiny", arch="llama"))
    script = tmp_path / "connect.py"
    script.write_text(_CONNECT)
    # A local Connect server's workers run the PYSPARK_PYTHON its JVM was started with (the Python side cannot
    # change it afterwards), else python3 from PATH: a user sets it, as here, with a PATH that does not lead here.
    env = {**env_without_this_python, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, str(script), model, json.dumps(ROWS)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)  # cwd: the local server's spark-warehouse goes there
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["true"] == out["false"] and len(out["true"]) == len(ROWS)
    assert "Aggregate" in out["true_plan"] and "Aggregate" not in out["false_plan"]  # the dedup rule ran
    assert "Spark Connect" in out["stats_error"]
