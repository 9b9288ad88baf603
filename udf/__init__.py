"""The LLM functions themselves: prompts and presets, options, the batch path and the DuckDB binding.

* ``udf.api``: the contract (``LLMCall``, ``EvalSettings``, ``StageStats``, ``EvalOutput``, ``ResultCache``);
* ``udf.functions``: ``llm``, ``llm_filter``, ``llm_classify``, ``llm_score`` (constraints, parsing, ``make_call``);
* ``udf.options``: the options struct and session defaults; ``udf.presets``: task presets;
* ``udf.prompts``: prompt layout and field serialisation;
* ``udf.batch.evaluate``: dedup, reorder, result cache, one ordered batch to the backend, parsing;
* ``udf.routing.answer``: how the SQL layers answer a call: one ``evaluate``, or stages (reasoning router, model
  cascades) that read each answer's confidence (``udf.confidence``); ``udf.multi_label``: the one-call-per-row join;
* ``udf.arrow_calls``: one Arrow batch of a function's arguments to its calls and back (DuckDB, Spark, pandas);
* ``udf.duckdb_udf.register_udfs``: the vectorised DuckDB UDFs (the fallback path);
* ``udf.agg``: the aggregate ``llm_agg`` (hierarchical folding of a group's values, its SQL rewrite for DuckDB).
"""
from udf.api import FUNCTIONS, EvalOutput, EvalSettings, LLMCall, ResultCache, StageStats

__all__ = ["FUNCTIONS", "EvalOutput", "EvalSettings", "LLMCall", "ResultCache", "StageStats", "evaluate",
           "make_call", "register_udfs", "validate_options"]


def __getattr__(name: str):  # light imports: the batch path pulls in the backends' base module
    if name == "evaluate":
        from udf.batch import evaluate

        return evaluate
    if name == "make_call":
        from udf.functions import make_call

        return make_call
    if name == "validate_options":
        from udf.options import validate_options

        return validate_options
    if name == "register_udfs":
        from udf.duckdb_udf import register_udfs

        return register_udfs
    raise AttributeError(name)
