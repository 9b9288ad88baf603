"""llm-sql: call large language models from SQL (DuckDB, Spark) and make it cheap.

The front door of the project: configuration, the ``llm-sql`` command line, run
statistics and the persistent result cache live here; inference is in
``engine_backend``, row reordering in ``optimizer``, the SQL functions in ``udf``.

    con = duckdb.connect()
    db = llm_sql.register(con, model="/path/to/model")       # or backend="openai", base_url=...
    db.sql("SELECT llm_filter('Is this review positive?', review) FROM reviews").fetchall()
    llm_sql.last_stats(con); print(llm_sql.explain(con, "SELECT ..."))

    spark = llm_sql.spark_session(model="/path/to/model")        # Spark: see llm_sql.spark_mode
    llm_sql.register(spark, model=...); llm_sql.last_stats(spark); print(llm_sql.explain(spark, "SELECT ..."))
"""

__version__ = "0.1.0"


def _is_spark(obj) -> bool:
    # classic and Spark Connect sessions alike (a Connect session has no sparkContext)
    return type(obj).__module__.startswith("pyspark.sql") and hasattr(obj, "udf") and hasattr(obj, "conf")


def register(con, **options):
    """Attach the LLM functions to a DuckDB connection (returns a wrapper whose ``.sql`` is optimised) or to a
    SparkSession (``llm_sql.spark_mode.register``; returns the session)."""
    if _is_spark(con):
        from llm_sql.spark_mode import register as _spark_register

        return _spark_register(con, **options)
    from llm_sql.duckdb_mode import register as _register

    return _register(con, **options)


def sql(con, query: str):
    """Run ``query`` on a registered connection through the optimiser."""
    from llm_sql.duckdb_mode import sql as _sql

    return _sql(con, query)


def last_stats(con):
    """``QueryStats`` of the last query run through the optimiser on ``con``; for a SparkSession, what the UDFs
    reported since ``register`` / ``llm_sql.spark_mode.reset_stats``; for a pandas or Modin DataFrame, the last
    ``df.llm`` call that read or returned it (``llm_sql.pandas``)."""
    if _is_spark(con):
        from llm_sql.spark_mode import last_stats as _spark_last_stats

        return _spark_last_stats(con)
    if type(con).__module__.startswith(("pandas.", "modin.", "llm_sql.session")):  # a DataFrame (llm_sql.pandas)
        from llm_sql.pandas import last_stats as _frame_last_stats

        return _frame_last_stats(con)
    from llm_sql.duckdb_mode import last_stats as _last_stats

    return _last_stats(con)


def explain(con, query: str | None = None, count: bool = True, analyze: bool = False):
    """The rewritten SQL and the stages with their estimates: rows, distinct inputs, tokenised prompt tokens,
    expected prefix hits, generated tokens and seconds (no LLM call). ``analyze=True`` runs the query and puts
    the actual figures beside the estimates (``llm_sql.estimate``). ``con`` may also be a SparkSession (the plan
    through the Catalyst rules, ``llm_sql.spark_explain``) or a Spark DataFrame (``query`` left out)."""
    if _is_spark(con) or type(con).__module__.startswith("pyspark.sql") and hasattr(con, "_jdf"):
        from llm_sql.spark_explain import explain as _spark_explain

        return _spark_explain(con, query, analyze=analyze)
    if query is None:
        raise TypeError("llm_sql.explain(con, query): give the SQL to explain")
    from llm_sql.duckdb_mode import explain as _explain

    return _explain(con, query, count=count, analyze=analyze)


def spark_session(model=None, **options):
    """A Spark session with the Catalyst extension (when it builds), its jar and the LLM functions registered."""
    from llm_sql.spark_mode import spark_session as _spark_session

    return _spark_session(model=model, **options)


__all__ = ["__version__", "register", "sql", "last_stats", "explain", "spark_session"]
