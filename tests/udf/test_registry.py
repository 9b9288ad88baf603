"""Every layer reads the LLM functions from one registry: a function is one entry."""
import duckdb
import pytest

from udf.api import FUNCTIONS
from udf.arrow_calls import ARROW_TYPES
from udf.prompts import CUES
from udf.registry import REGISTRY, spec_of


def test_layers_list_exactly_the_registry():
    assert FUNCTIONS == tuple(REGISTRY)
    assert set(CUES) == set(ARROW_TYPES) == set(REGISTRY)
    with pytest.raises(ValueError, match="unknown LLM function 'llm_foo'.*llm, llm_filter"):
        spec_of("llm_foo")


def test_duckdb_functions_have_the_registry_types(backend):
    from udf.api import EvalSettings
    from udf.arrow_calls import Target
    from udf.duckdb_udf import register_udfs

    con = duckdb.connect()
    register_udfs(con, lambda m: Target(backend), EvalSettings(progress=False))
    for name, spec in REGISTRY.items():
        row = con.execute("SELECT return_type FROM duckdb_functions() WHERE function_name = ?", [name]).fetchone()
        if spec.typed_by_schema:  # registered per schema by the connection wrapper (tests/test_extract.py)
            assert row is None
        else:
            assert row is not None and row[0] == spec.duckdb_type
