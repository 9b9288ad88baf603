"""llm-sql: call large language models from SQL (DuckDB, Spark) and make it cheap.

The front door of the project: configuration, the ``llm-sql`` command line, run
statistics and the persistent result cache live here; inference is in
``engine_backend``, row reordering in ``optimizer``, the SQL functions in ``udf``.
"""

__version__ = "0.1.0"
