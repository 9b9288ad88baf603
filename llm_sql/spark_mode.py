"""Spark mode: the LLM functions in Spark SQL and the DataFrame API, one engine server per node.

    spark = llm_sql.spark_session(model="/path/to/model")          # extension + jar + functions
    # or, for an existing session (UDF path; warns once if the Catalyst extension is not loaded):
    llm_sql.register(spark, model="/path/to/model")                # backend="openai", base_url=... also works
    spark.sql("SELECT llm_filter('Is this review positive?', struct(review)) FROM reviews")
    llm_sql.last_stats(spark)

SQL forms: see ``udf.spark_udf`` (``llm(instruction, field, ... [, options])``, ``llm_filter``, ``llm_score``
alike, ``llm_classify(field, ..., array('a', 'b') [, options])``, ``llm_extract(instruction, field, ...,
named_struct('schema', 'a STRING, b DOUBLE'))`` -> a STRUCT with the extension; ``struct(col, ...)`` names the
fields; the aggregate ``llm_agg(instruction, field [, options])`` with GROUP BY, ``udf.agg``).

Configuration (``spark-defaults.conf`` or ``SparkSession.builder.config``):

| key | meaning |
|---|---|
| ``spark.sql.extensions=io.llmsql.catalyst.LLMSQLExtensions`` | install the Catalyst rules (dedup, ordering, planning around the LLM) |
| ``spark.jars=<llm_sql.jvm.extension_jar()>`` | the jar holding them (built with ``javac`` on first use) |
| ``llm_sql.optimize=false`` | session setting read by the rules: turn them off (for comparisons); ``register(spark, optimize=False)`` sets it and also turns off the UDF's per-batch dedup and reordering |
| ``llm_sql.reorder_fields=true`` | reorder the fields inside each prompt (opt-in: it rewords prompts); ``register(spark, reorder_fields=True)`` sets it |
| ``llm_sql.field_order=batch`` | where that order comes from: ``batch`` (default) or ``statistics`` |

Field order (with ``reorder_fields``): by default the UDF chooses it per Arrow batch (GGR over the batch's distinct
values and their lengths; rows may get different orders). With ``llm_sql.field_order=statistics``, when every field
of a call's ``struct(...)`` is a column with catalog statistics (``ANALYZE TABLE t COMPUTE STATISTICS FOR COLUMNS
...``, cached tables too), the ``ChooseFieldOrder`` rule picks one order for all rows, fields by
``avg_len^2 * (rows - distinct) / rows``, most first, and passes it to the UDF (``reorder_fields => false``).
Per-column statistics cannot see how columns combine, so on beer (2,000 rows) that order shares less than the
batch estimate (54% vs 72% of prompt tokens from the prefix cache); it is there for tables whose columns are
independent or nested.

Spark Connect: the rules run in the server's session, so Connect clients get them; ``register`` works on a Connect
session (``SparkSession.builder.remote(...)``) too, except that Connect has no accumulators, so ``last_stats`` is
not available there (the engine server's ``/metrics`` has the token counts).

Backends and models: the options are DuckDB mode's (``llm_sql.config``), so ``models={"small": DIR1, "large":
DIR2}`` works here too and ``named_struct('model', 'large')`` routes a call. An embedded model runs as
``llm-sql serve`` once per node and model (``llm_sql.node_engine``; in local mode the driver starts it at
``register`` and stops it at exit or ``stop(spark)``); an ``openai`` model (``backend="openai", base_url=...``,
or a URL in ``models``) sends its batches to that external OpenAI-compatible endpoint.

Interpreter: local mode's Python workers run the driver's interpreter unless ``PYSPARK_PYTHON`` or
``spark.pyspark.python`` says otherwise; see ``workers_run_this_python``.

Explain: ``llm_sql.explain(spark, sql)`` / ``llm_sql.explain(df)`` (``llm_sql.spark_explain``) prints the plan after
the rules and each LLM call's estimates; ``analyze=True`` runs it and sets the actuals beside them.

Statistics: ``last_stats(spark)`` sums what every UDF batch reported through a Spark accumulator since
``register`` or the last ``reset_stats(spark)`` (rows in, distinct inputs, LLM calls, NULL inputs, errors with
their first reasons, prompt / cached prompt / generated tokens as the engine reported them per request, the
Python worker pids and the server pids they used, and the same figures per LLM call in ``by_call``). Accumulators are updated when a task finishes, so the
numbers are complete once an action has returned; a retried task counts twice.

Result cache: as in DuckDB mode (``llm_sql.cache``), on by default, one SQLite file per node
(``cache_path=...`` or the default under the user's cache directory), shared by that node's Python workers and
keyed by the same model identity as DuckDB mode. A worker that cannot open it says so on stderr and runs
without it. ``register(spark, cache=False)`` turns it off.
"""
from __future__ import annotations

import atexit
import os
import time
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

from llm_sql.config import Config, ModelSpec, make_config
from llm_sql.session import QueryStats
from udf.api import FUNCTIONS, EvalSettings
from udf.arrow_calls import Target

EXTENSION_CLASS = "io.llmsql.catalyst.LLMSQLExtensions"
OPTIMIZE_CONF = "llm_sql.optimize"
REORDER_FIELDS_CONF = "llm_sql.reorder_fields"
_WARNED = {"extension": False}


@dataclass(frozen=True)
class BackendSpec:
    """How a worker reaches the LLM: the node engine (``key`` + ``model`` dir) or an external ``base_url``."""

    kind: str  # "node" | "openai"
    model: str | None = None
    key: str | None = None  # node_engine.app_key(...)
    engine_args: tuple[str, ...] = ()
    base_url: str | None = None
    api_key: str | None = None
    backend_options: tuple[tuple[str, Any], ...] = ()


_BACKENDS: dict[BackendSpec, tuple[Any, Any]] = {}  # per Python worker: spec -> (server record, backend)


def worker_backend(spec: BackendSpec) -> tuple[Any, int | None]:
    """(backend, server pid or None) in this process; the node server is (re)started when it is not healthy."""
    from engine_backend.backends import make_backend
    from llm_sql import node_engine

    if spec.kind == "openai":
        if spec not in _BACKENDS:
            _BACKENDS[spec] = (None, make_backend("openai", base_url=spec.base_url, api_key=spec.api_key,
                                                  model=spec.model, **dict(spec.backend_options)))
        return _BACKENDS[spec][1], None
    cached = _BACKENDS.get(spec)
    if cached is not None and node_engine.healthy(cached[0]):
        return cached[1], cached[0]["pid"]
    # Not started yet on this node, or it died: start it under the lock. An executor's worker watches its
    # parent, the PySpark daemon, which lives as long as the executor.
    state = node_engine.ensure_server(spec.key, spec.model, spec.engine_args, watch_pid=os.getppid())
    if cached is not None:
        cached[1].close()
    # Few transport retries on loopback: a dead server is better restarted (the UDF retries the batch once).
    opts = {"max_retries": 2, **dict(spec.backend_options)}
    backend = make_backend("openai", base_url=state["url"], api_key=state["token"], **opts)
    _BACKENDS[spec] = (state, backend)
    return backend, state["pid"]


@dataclass
class SparkStats(QueryStats):
    batches: int = 0  # Arrow batches (x call groups) the UDFs evaluated
    worker_pids: list[int] = field(default_factory=list)  # Python workers that evaluated them
    server_pids: list[int] = field(default_factory=list)  # engine servers they were sent to
    # per LLM call (udf.spark_udf.call_key): its figures, and llm_wall_seconds, the wall time during which at
    # least one of its batches was being answered (concurrent workers' batches overlap: their sum would not be)
    by_call: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Registration:
    route: WorkerRoute
    settings: EvalSettings
    accumulator: Any
    result_cache: Any = None  # what the workers read and write (llm_sql.cache.ResultCache), None when off
    baseline: dict[str, Any] = field(default_factory=dict)
    since: float = 0.0  # when the baseline was taken (time.time()): a call's batch intervals after it are new


_REGISTRY: dict[str, _Registration] = {}  # application id -> the latest registration


def extension_loaded(spark) -> bool:
    return "LLMSQLExtensions" in (spark.conf.get("spark.sql.extensions", "") or "")


def _warn_no_extension() -> None:
    if not _WARNED["extension"]:
        _WARNED["extension"] = True
        warnings.warn(f"llm-sql: the Catalyst extension ({EXTENSION_CLASS}) is not loaded in this Spark session: "
                      "the LLM functions run through the vectorised UDF only (dedup and reordering within each "
                      "Arrow batch, no plan rewriting), and llm_extract returns its JSON text instead of a STRUCT. "
                      "Use llm_sql.spark_session(...) or set spark.sql.extensions "
                      "and spark.jars before the session starts.", RuntimeWarning, stacklevel=3)


def _backend_spec(spec: ModelSpec, app_id: str) -> BackendSpec:
    """How a worker reaches one of the session's models: its node engine server, or its external endpoint."""
    from llm_sql import node_engine

    if spec.backend == "openai":
        return BackendSpec(kind="openai", model=spec.model, base_url=spec.base_url, api_key=spec.api_key,
                           backend_options=spec.backend_options)
    if spec.backend != "embedded":
        raise ValueError(f"Spark mode supports backend='embedded' or 'openai', got {spec.backend!r} "
                         f"(model {spec.name!r})")
    engine_opts = dict(spec.engine_options)
    return BackendSpec(kind="node", model=spec.model, key=node_engine.app_key(app_id, spec.model, engine_opts),
                       engine_args=tuple(node_engine.engine_args_from(engine_opts)),
                       backend_options=spec.backend_options)


@dataclass(frozen=True)
class WorkerRoute:
    """The UDFs' route inside a Python worker (picklable): model name -> ``Target`` on that model's backend."""

    config: Config
    backends: tuple[tuple[str, BackendSpec], ...]  # model name -> how to reach it

    def spec(self, model: str | None = None) -> BackendSpec:
        return dict(self.backends)[self.config.model(model).name]

    def __call__(self, model: str | None = None) -> Target:
        spec = self.config.model(model)
        how = dict(self.backends)[spec.name]
        backend, pid = worker_backend(how)
        # the node engine serves a local checkpoint: llm_agg counts its chunks with that tokenizer (udf.agg)
        return Target(backend, spec.identity, pid, model=spec.name,
                      model_dir=how.model if how.kind == "node" else None)


def register(spark, *, optimize: bool | None = None, progress: bool = False, start: bool | None = None,
             **options: Any):
    """Register ``llm``, ``llm_filter``, ``llm_classify``, ``llm_score``, ``llm_extract`` on ``spark``; returns it.

    ``options`` are ``llm_sql.config.make_config``'s (the same as DuckDB mode's: ``model`` / ``models``,
    ``backend``, ``cache``, function defaults, ...). ``start`` (default: True in local mode) starts the node's
    engine servers now, on the driver. ``optimize`` (default: leave the session's setting) sets
    ``llm_sql.optimize``; ``False`` also turns off the UDF's per-batch dedup and reordering.
    """
    from llm_sql import node_engine
    from udf.spark_udf import make_arrow_udf, new_accumulator

    config = make_config(optimize=optimize, progress=progress, **options)
    if optimize is not None:
        spark.conf.set(OPTIMIZE_CONF, "true" if optimize else "false")
    if "reorder_fields" in config.defaults:  # read by the ChooseFieldOrder rule
        spark.conf.set(REORDER_FIELDS_CONF, "true" if config.defaults["reorder_fields"] else "false")
    app_id = _app_id(spark)
    route = WorkerRoute(config, tuple((m.name, _backend_spec(m, app_id)) for m in config.models))
    local = _master(spark).startswith("local")
    for _, spec in route.backends:
        if spec.kind == "openai":
            worker_backend(spec)[0]._model()  # fail now, naming the URL, if the server does not answer
        elif start if start is not None else local:
            node_engine.ensure_server(spec.key, spec.model, spec.engine_args, watch_pid=os.getpid())
            if local:
                atexit.register(node_engine.stop_server, spec.key)
    workers_run_this_python(spark, local)

    acc = None if is_connect(spark) else new_accumulator(spark)  # Spark Connect has no accumulators
    result_cache = config.result_cache()  # pickled to the workers; reopens there
    for name in FUNCTIONS:  # llm_extract answers JSON text; the extension's TypeExtractCalls makes it a STRUCT
        spark.udf.register(name, make_arrow_udf(name, route, config.udf_settings, acc, result_cache=result_cache))
    from udf.spark_udf import make_agg_udfs  # llm_agg and llm_agg_list (udf.agg)

    for name, agg_udf in make_agg_udfs(route, config.udf_settings, acc, result_cache=result_cache).items():
        spark.udf.register(name, agg_udf)
    _REGISTRY[app_id] = _Registration(route=route, settings=config.udf_settings, accumulator=acc,
                                      result_cache=result_cache)
    if not extension_loaded(spark):
        _warn_no_extension()
    return spark


# What the UDFs import in a worker; a worker interpreter without them fails every task.
WORKER_MODULES = ("pyarrow", "numpy", "udf", "engine_backend", "llm_sql")


def workers_run_this_python(spark, local: bool) -> None:
    """Point the Python workers at an interpreter that has llm-sql, or say that they lack it.

    PySpark starts workers with ``$PYSPARK_PYTHON`` or else ``python3`` from PATH, which is not the venv when
    the driver was started by its path (IDEs, cron, notebook kernels). So in a classic local session, unless
    the user chose one (``PYSPARK_PYTHON`` or ``spark.pyspark.python``), the workers run the driver's own
    interpreter. Where they run another one (a cluster, the user's choice, or a Spark Connect server, whose
    workers run the server's ``PYSPARK_PYTHON``), one tiny query checks that it can import what the UDFs need
    and warns, naming what is missing, if it cannot.
    """
    if not is_connect(spark):
        sc = spark.sparkContext
        chosen = os.environ.get("PYSPARK_PYTHON") or sc.getConf().get("spark.pyspark.python", None)
        if chosen:
            sc.pythonExec = chosen
        elif local:
            sc.pythonExec = sys.executable
        if sc.pythonExec == sys.executable:
            return
    missing = _missing_on_workers(spark)
    if missing:
        warnings.warn(f"llm-sql: Spark's Python workers {missing}: every LLM query will fail there. Install "
                      "llm-sql for that interpreter, or point PYSPARK_PYTHON / spark.pyspark.python at one that "
                      "has it (a Spark Connect server reads PYSPARK_PYTHON from its environment when it starts)",
                      RuntimeWarning, stacklevel=3)


def _missing_on_workers(spark) -> str | None:
    """None if a worker imports everything in ``WORKER_MODULES``, else what went wrong, in words."""
    import json

    from pyspark.sql import functions as F

    modules = WORKER_MODULES

    def probe(_):  # runs in the worker: standard library only
        import importlib.util
        import json as worker_json
        import sys as worker_sys

        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        return worker_json.dumps([worker_sys.executable, missing])

    try:
        if is_connect(spark):
            row = spark.range(1).select(F.udf(probe, "string")(F.col("id"))).collect()[0][0]
        else:  # an RDD task: its worker needs nothing beyond the standard library and pyspark itself
            row = spark.sparkContext.parallelize([0], 1).map(probe).collect()[0]
    except Exception as exc:  # noqa: BLE001 - the workers could not even start
        errors = re.findall(r"^\s*(\w+(?:Error|Exception): .+)$", str(exc), re.MULTILINE)
        return f"could not run a test task ({errors[-1] if errors else type(exc).__name__})"
    python, missing = json.loads(row)
    return f"run {python}, which cannot import {', '.join(missing)}" if missing else None


def is_connect(spark) -> bool:
    """A Spark Connect client session (``SparkSession.builder.remote(...)``) rather than a classic one."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _app_id(spark) -> str:
    return spark.conf.get("spark.app.id") if is_connect(spark) else spark.sparkContext.applicationId


def _master(spark) -> str:
    return (spark.conf.get("spark.master", "") if is_connect(spark) else spark.sparkContext.master) or ""


def _registration(spark) -> _Registration:
    reg = _REGISTRY.get(_app_id(spark))
    if reg is None:
        raise RuntimeError("llm_sql.register(spark, ...) has not been called for this Spark application")
    return reg


def reset_stats(spark) -> None:
    reg = _registration(spark)
    reg.baseline = dict(reg.accumulator.value) if reg.accumulator is not None else {}
    reg.since = time.time()


def last_stats(spark) -> SparkStats:
    """What the UDFs reported since ``register`` / ``reset_stats`` (see the module doc)."""
    reg = _registration(spark)
    if reg.accumulator is None:
        raise RuntimeError("llm_sql.last_stats is not available over Spark Connect (it has no accumulators); the "
                           "engine server's /metrics endpoint has the prompt, cached and generated token counts")
    now, base = dict(reg.accumulator.value), reg.baseline
    s = SparkStats(optimized=reg.settings.dedup or reg.settings.reorder)
    for name in ("rows_in", "distinct_inputs", "llm_calls", "cache_hits", "null_inputs", "errors", "prompt_tokens",
                 "cached_prompt_tokens", "generated_tokens", "batches", "rows_reasoned", "reasoning_tokens"):
        setattr(s, name, int(now.get(name, 0) - base.get(name, 0)))
    for name in ("solve_seconds", "llm_seconds", "generated_tokens_saved", "llm_seconds_saved"):
        setattr(s, name, float(now.get(name, 0.0) - base.get(name, 0.0)))
    cur, old = now.get("rows_by_model", {}), base.get("rows_by_model", {})
    s.rows_by_model = {m: n - old.get(m, 0) for m, n in cur.items() if n - old.get(m, 0)}
    s.fallback_chunks = s.batches
    s.error_reasons = list(now.get("error_reasons", []))[len(base.get("error_reasons", [])):]
    for name in ("worker_pids", "server_pids"):  # the processes that evaluated batches since the baseline
        cur, old = now.get(name, {}), base.get(name, {})
        setattr(s, name, sorted(p for p, n in cur.items() if n > old.get(p, 0)))
    old_calls = base.get("by_call", {})
    for key, cur in now.get("by_call", {}).items():
        old = old_calls.get(key, {})
        if cur.get("batches", 0) <= old.get("batches", 0):
            continue
        figures = {k: v - old.get(k, 0) for k, v in cur.items() if isinstance(v, (int, float))}
        figures["llm_wall_seconds"] = _covered([iv for iv in cur.get("intervals", []) if iv[1] > reg.since])
        s.by_call[key] = figures
    return s


def _covered(intervals: list) -> float:
    """Seconds covered by the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def server_info(spark, model: str | None = None) -> dict[str, Any] | None:
    """The local node server's record (``server.json``: pid, port, url, ...) of a model (default: the session's
    default), None for an external endpoint."""
    from llm_sql import node_engine

    spec = _registration(spark).route.spec(model)
    return node_engine.read_state(spec.key) if spec.kind == "node" else None


def stop(spark) -> bool:
    """Stop this machine's engine servers of the session (local mode); True if one was running."""
    from llm_sql import node_engine

    stopped = [node_engine.stop_server(spec.key) for _, spec in _registration(spark).route.backends
               if spec.kind == "node"]
    return any(stopped)


def spark_session(model: str | None = None, *, master: str = "local[*]", app_name: str = "llm-sql",
                  conf: dict[str, str] | None = None, extra_jars: tuple[str, ...] | list[str] = (),
                  skystore: dict[str, Any] | bool | None = None, **options: Any):
    """A Spark session with the Catalyst extension and its jar (when they build) and the functions registered.

    ``extra_jars`` go on ``spark.jars`` beside the extension's; ``conf`` is applied last; ``options`` go to
    ``register``. The ``skystore://`` Hadoop FileSystem is mounted when its jar builds: ``skystore`` is a dict
    of ``endpoint``, ``access_key``, ``secret_key``, ``region``, ``multipart_size`` (unset ones from the
    ``SKYSTORE_*`` environment variables); ``False`` leaves it out.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        # the workers run this interpreter, not python3 from PATH (register() also sees to it)
        for key in ("spark.pyspark.python", "spark.pyspark.driver.python"):
            if key not in (conf or {}):
                builder = builder.config(key, sys.executable)
    jars = list(extra_jars)
    try:
        from llm_sql.jvm import add_to_driver_classpath, extension_jar

        jar = extension_jar()
        jars.insert(0, str(jar))
        add_to_driver_classpath(jar)  # a JVM already running in this process never reads spark.jars again
        builder = builder.config("spark.sql.extensions", EXTENSION_CLASS)
    except Exception as exc:  # no jvm module yet, no javac, a compile error: the UDF path still works
        warnings.warn(f"llm-sql: the Catalyst extension is not available ({type(exc).__name__}: {exc}); "
                      "building the session without it", RuntimeWarning, stacklevel=2)
        _WARNED["extension"] = True  # said once here; register() need not say it again
    skystore_conf: dict[str, str] = {}
    if skystore is not False:
        try:
            from llm_sql.jvm import skystore_for_session

            skystore_jar, skystore_conf = skystore_for_session(skystore if isinstance(skystore, dict) else None)
            jars.append(str(skystore_jar))
            for k, v in skystore_conf.items():
                builder = builder.config("spark.hadoop." + k, v)
        except Exception as exc:  # no javac or a compile error: only skystore:// paths are missing
            if skystore:  # asked for by the caller: say why it is not there
                warnings.warn(f"llm-sql: the skystore:// FileSystem is not available ({type(exc).__name__}: "
                              f"{exc})", RuntimeWarning, stacklevel=2)
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    hadoop = spark._jsc.hadoopConfiguration()  # a SparkContext that was already running keeps its own
    for k, v in skystore_conf.items():
        if "spark.hadoop." + k not in (conf or {}):
            hadoop.set(k, v)
    register(spark, model=model, **options)
    return spark
