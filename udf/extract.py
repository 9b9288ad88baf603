"""``llm_extract``'s output: a schema (a DDL field list or a JSON schema) -> what the engine decodes under, the
SQL and Arrow types of the value, and the typed value of an answer.

    llm_extract('Extract the facts', review, {'schema': 'brewery VARCHAR, abv DOUBLE, styles VARCHAR[]'})

returns ``STRUCT(brewery VARCHAR, abv DOUBLE, styles VARCHAR[])``. The model decodes under the equivalent JSON
schema (``engine_backend.grammar``), so a complete answer always parses; one cut off at ``max_tokens`` is NULL
with that reason. Strings and arrays are bounded (``MAX_STRING`` characters, ``MAX_ITEMS`` items, or a JSON
schema's own ``maxItems`` up to ``MAX_ITEMS_LIMIT``) so that an
answer ends within its token budget. Supported types: VARCHAR/TEXT/STRING, INTEGER/BIGINT/LONG (and the smaller
ints), DOUBLE/FLOAT/DECIMAL (as DOUBLE), BOOLEAN, ``T[]`` / ``ARRAY<T>`` and nested ``STRUCT(...)`` /
``STRUCT<...>``; Spark's spelling with colons and backquotes (``a: INT, `b c`: STRUCT<x: STRING>``) reads as
Spark DDL. A JSON schema may use string, integer, number, boolean, enum (of strings), array and object.

In Spark a value travels as its JSON text (``json_text``), which the Catalyst rule ``TypeExtractCalls`` turns
into the STRUCT with ``from_json``: a UDF's return type is fixed when it is registered, a schema is not.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

MAX_STRING = 64
MAX_ITEMS = 8
MAX_ITEMS_LIMIT = 64


@dataclass(frozen=True)
class Field:
    kind: str  # "string" | "integer" | "bigint" | "number" | "boolean" | "array" | "object"
    children: tuple[tuple[str, "Field"], ...] = ()  # object: named fields; array: one ("item", field)
    enum: tuple[str, ...] = ()
    max_items: int = MAX_ITEMS  # array: a JSON schema's own maxItems, up to MAX_ITEMS_LIMIT

    def json_schema(self) -> dict[str, Any]:
        if self.enum:
            return {"enum": list(self.enum)}
        if self.kind == "string":
            return {"type": "string", "maxLength": MAX_STRING}
        if self.kind == "integer":  # the grammar enforces the bounds: a value always fits its SQL column
            return {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1}
        if self.kind == "bigint":
            return {"type": "integer"}  # the grammar caps integers at 18 digits: within BIGINT
        if self.kind == "array":
            return {"type": "array", "items": self.children[0][1].json_schema(), "maxItems": self.max_items}
        if self.kind == "object":
            return {"type": "object", "properties": {n: f.json_schema() for n, f in self.children},
                    "required": [n for n, _ in self.children]}
        return {"type": self.kind}

    def arrow(self) -> pa.DataType:
        if self.kind == "array":
            return pa.list_(self.children[0][1].arrow())
        if self.kind == "object":
            return pa.struct([(n, f.arrow()) for n, f in self.children])
        return {"string": pa.string(), "integer": pa.int32(), "bigint": pa.int64(), "number": pa.float64(),
                "boolean": pa.bool_()}[self.kind]

    def sql(self, dialect: str) -> str:
        if self.kind == "array":
            inner = self.children[0][1].sql(dialect)
            return f"ARRAY<{inner}>" if dialect == "spark" else f"{inner}[]"
        if self.kind == "object":
            if dialect == "spark":
                return "STRUCT<" + ", ".join(f"`{n}`: {f.sql(dialect)}" for n, f in self.children) + ">"
            return "STRUCT(" + ", ".join(f'"{n}" {f.sql(dialect)}' for n, f in self.children) + ")"
        names = {"string": ("VARCHAR", "STRING"), "integer": ("INTEGER", "INT"), "bigint": ("BIGINT", "BIGINT"),
                 "number": ("DOUBLE", "DOUBLE"), "boolean": ("BOOLEAN", "BOOLEAN")}[self.kind]
        return names[1] if dialect == "spark" else names[0]

    def value(self, v: Any, where: str = "answer") -> Any:
        """The JSON value as this SQL type; ValueError naming the place where it does not fit."""
        if self.enum:
            if v not in self.enum:
                raise ValueError(f"{where}: {v!r} is not one of {list(self.enum)}")
            return v
        ok = {"string": lambda x: isinstance(x, str),
              "integer": lambda x: isinstance(x, int) and not isinstance(x, bool) and -2**31 <= x < 2**31,
              "bigint": lambda x: isinstance(x, int) and not isinstance(x, bool) and -2**63 <= x < 2**63,
              "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
              "boolean": lambda x: isinstance(x, bool),
              "array": lambda x: isinstance(x, list), "object": lambda x: isinstance(x, dict)}[self.kind]
        if not ok(v):
            raise ValueError(f"{where}: {v!r} is not a {self.sql('duckdb')}")
        if self.kind == "number":
            return float(v)
        if self.kind == "array":
            item = self.children[0][1]
            return [item.value(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if self.kind == "object":
            missing = [n for n, _ in self.children if n not in v]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)}")
            return {n: f.value(v[n], f"{where}.{n}") for n, f in self.children}
        return v


@dataclass(frozen=True)
class OutputSchema:
    root: Field  # an object

    @property
    def json_schema(self) -> dict[str, Any]:
        return self.root.json_schema()

    @property
    def arrow_type(self) -> pa.DataType:
        return self.root.arrow()

    @property
    def duckdb_type(self) -> str:
        return self.root.sql("duckdb")

    @property
    def spark_type(self) -> str:
        return self.root.sql("spark")

    def parse(self, text: str) -> tuple[Any, str | None]:
        try:
            data = json.loads(text)
        except ValueError:
            return None, f"the answer is not complete JSON (cut at max_tokens?): {text[:80]!r}"
        try:
            return self.root.value(data), None
        except ValueError as exc:
            return None, f"the answer does not fit the schema: {exc}"


def json_text(value: Any) -> str | None:
    """A parsed value (``OutputSchema.parse``) as compact JSON, for Spark's ``from_json``; None stays None."""
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_DDL_KINDS = {"TEXT": "string", "VARCHAR": "string", "CHAR": "string", "NVARCHAR": "string", "NCHAR": "string",
              "INT": "integer", "TINYINT": "integer", "SMALLINT": "integer", "BIGINT": "bigint",
              "DOUBLE": "number", "FLOAT": "number", "DECIMAL": "number", "BOOLEAN": "boolean"}
_JSON_KINDS = ("string", "integer", "number", "boolean", "array", "object")


def _from_ddl(dtype) -> Field:
    from sqlglot import exp

    kind = dtype.this.name if hasattr(dtype.this, "name") else str(dtype.this)
    if kind == "ARRAY":
        return Field("array", (("item", _from_ddl(dtype.expressions[0])),))
    if kind == "STRUCT":
        fields = []
        for col in dtype.expressions:
            if not isinstance(col, exp.ColumnDef) or col.args.get("kind") is None:
                raise ValueError(f"schema: every STRUCT field needs a name and a type, got {col.sql('duckdb')!r}")
            fields.append((col.name, _from_ddl(col.args["kind"])))
        return Field("object", tuple(fields))
    if kind not in _DDL_KINDS:
        raise ValueError(f"schema: unsupported type {dtype.sql('duckdb')}; supported: VARCHAR, INTEGER, BIGINT, "
                         "DOUBLE, BOOLEAN, T[] and STRUCT(...)")
    return Field(_DDL_KINDS[kind])


def _from_json(schema: Any, where: str = "schema") -> Field:
    if not isinstance(schema, dict):
        raise ValueError(f"{where} must be a JSON object")
    if "enum" in schema:
        values = schema["enum"]
        if not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{where}: enum must list strings")
        return Field("string", enum=tuple(values))
    kind = schema.get("type")
    if kind not in _JSON_KINDS:
        raise ValueError(f"{where}: type must be one of {', '.join(_JSON_KINDS)}, got {kind!r}")
    if kind == "array":
        limit = schema.get("maxItems", MAX_ITEMS)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_ITEMS_LIMIT:
            raise ValueError(f"{where}: maxItems must be an integer in [1, {MAX_ITEMS_LIMIT}], got {limit!r}")
        return Field("array", (("item", _from_json(schema.get("items"), f"{where}.items")),), max_items=limit)
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            raise ValueError(f"{where}: an object needs properties")
        return Field("object", tuple((n, _from_json(s, f"{where}.{n}")) for n, s in props.items()))
    return Field(kind)


@functools.lru_cache(maxsize=256)
def output_schema(spec: str) -> OutputSchema:
    """The output schema of a ``schema`` option: a DDL field list in DuckDB's or Spark's spelling (``'a VARCHAR,
    b DOUBLE[]'``, ``'a STRING, b: ARRAY<DOUBLE>'``) or a JSON schema of an object (text starting with ``{``).
    ValueError says what is wrong. Spark's Catalyst rule reads the same text (``ExtractSchema.java``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("llm_extract needs the option schema: a field list like 'brewery VARCHAR, abv DOUBLE' "
                         "or a JSON schema")
    text = spec.strip()
    if text.startswith("{"):
        try:
            root = _from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"schema is not valid JSON: {exc}") from None
    else:
        import sqlglot
        from sqlglot import exp

        # Spark's spelling (`name`: TYPE, STRUCT<a: INT>) reads as Spark DDL; DuckDB's reads ARRAY<T> too.
        spark = ":" in text or "`" in text
        try:
            root = _from_ddl(exp.DataType.build(f"STRUCT<{text}>" if spark else f"STRUCT({text})",
                                                dialect="spark" if spark else "duckdb"))
        except sqlglot.errors.SqlglotError as exc:
            raise ValueError(f"schema {text!r} is not a field list like 'brewery VARCHAR, abv DOUBLE': "
                             f"{str(exc).splitlines()[0]}") from None
    if root.kind != "object":
        raise ValueError("schema must describe an object (a field list, or a JSON schema of type object)")
    return OutputSchema(root)
