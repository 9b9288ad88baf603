"""The LLM functions for the PySpark DataFrame API (after ``llm_sql.register(spark, ...)``).

    from llm_sql.functions import llm, llm_filter, llm_classify, llm_score, llm_extract
    df.select(llm("Classify the sentiment", F.col("review")))
    df.where(llm_filter("Is it about beer?", "review", "style", options={"max_tokens": 4}))
    df.select(llm_classify(F.col("review"), ["pos", "neg"]))
    df.groupBy("style").agg(F.avg(llm_score("How positive?", "review")))
    df.select(llm_extract("Extract the facts", "review", schema="brewery STRING, abv DOUBLE").alias("x"))

Fields are columns or column names; they are passed to the registered SQL function as ONE struct
(``struct(review, style)``), so the prompt names each field after its column (an expression is named by
Spark's rendering of it; ``F.col(...).alias("name")`` names it explicitly). The instruction, the labels and
the options are literals. The result is a call of the registered function (``call_function``), so the
Catalyst rules see the same call as in SQL.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from udf.options import validate_options


def _fields(fields: tuple[Any, ...]):
    from pyspark.sql import functions as F

    if not fields:
        raise ValueError("give at least one field column")
    cols = []
    for f in fields:
        if isinstance(f, (list, tuple)):
            cols.extend(F.col(x) if isinstance(x, str) else x for x in f)
        else:
            cols.append(F.col(f) if isinstance(f, str) else f)
    return F.struct(*cols)


def _options(options: Mapping[str, Any] | None):
    from pyspark.sql import functions as F

    opts = validate_options(options)  # a clear ValueError now, not inside a task
    if not opts:
        return []
    return [F.struct(*[F.lit(v).alias(k) for k, v in opts])]


def _call(name: str, *args):
    from pyspark.sql import functions as F

    return F.call_function(name, *args)


def _instructed(name: str, instruction: str, fields: tuple[Any, ...], options):
    from pyspark.sql import functions as F

    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"{name} needs a non-empty instruction (text or a preset name)")
    return _call(name, F.lit(instruction), _fields(fields), *_options(options))


def llm(instruction: str, *fields: Any, options: Mapping[str, Any] | None = None):
    """STRING column: the model's answer to ``instruction`` about the fields."""
    return _instructed("llm", instruction, fields, options)


def llm_filter(instruction: str, *fields: Any, options: Mapping[str, Any] | None = None):
    """BOOLEAN column: yes/no."""
    return _instructed("llm_filter", instruction, fields, options)


def llm_score(instruction: str, *fields: Any, options: Mapping[str, Any] | None = None):
    """INT column, 1..5."""
    return _instructed("llm_score", instruction, fields, options)


def llm_extract(instruction: str, *fields: Any, schema: str, options: Mapping[str, Any] | None = None):
    """STRUCT column of ``schema``'s types (a field list like ``"brewery STRING, styles ARRAY<STRING>"`` or a JSON
    schema; ``udf.extract``), typed by the Catalyst extension as in SQL; NULL where the model could not produce a
    value, with the reason in ``llm_sql.last_stats(spark)``."""
    from udf.extract import output_schema

    output_schema(schema)  # a malformed schema is a ValueError now, naming what is wrong, not a failed task
    return _instructed("llm_extract", instruction, fields, {**(options or {}), "schema": schema})


def llm_classify(*fields_and_labels: Any, labels: Iterable[str] | None = None,
                 options: Mapping[str, Any] | None = None):
    """STRING column, one of ``labels``: ``llm_classify(col, ["pos", "neg"])`` or ``llm_classify(col, labels=[...])``."""
    from pyspark.sql import functions as F

    from udf.functions import validate_labels

    fields = list(fields_and_labels)
    if labels is None:
        if not fields or not isinstance(fields[-1], (list, tuple)):
            raise ValueError("llm_classify(field, ..., labels): give the labels as a list of strings")
        labels = fields.pop()
    labels = validate_labels(labels)
    return _call("llm_classify", _fields(tuple(fields)), F.array(*[F.lit(x) for x in labels]), *_options(options))


__all__ = ["llm", "llm_filter", "llm_classify", "llm_score", "llm_extract"]
