"""pandas and Modin: the LLM functions as a DataFrame accessor, ``df.llm``.

    import llm_sql.pandas                                  # registers df.llm (pandas, and Modin when installed)
    llm_sql.pandas.configure(model="/path/to/checkpoint")  # the same options as llm_sql.register

    positive = df.llm.filter("Is the review positive?", "review")           # the rows that pass, index kept
    df = df.llm.map("Summarise the review", "review", into="summary")       # the frame with a new column
    df = df.llm.classify("review", labels=["good", "bad"], into="label")
    df = df.llm.score("Rate the beer", "review", "style", into="score")     # Int32, 1..5
    df = df.llm.extract("Extract the facts", "review", schema="brewery VARCHAR, abv DOUBLE")   # one column a field
    per_style = df.llm.agg("Summarise the reviews", "review", by="style")   # one row per style (llm_agg, udf.agg)
    pairs = reviews.llm.join(flavours, "Does the review mention it?", left_on="review", right_on="flavour")
    llm_sql.last_stats(df)                                 # rows in, LLM calls after dedup, cache hits, tokens, ...

Every method is ``llm(instruction, field, ...)`` (``llm_filter``, ``llm_classify``, ``llm_score``,
``llm_extract``) over the named columns, answered by the same Arrow batch path as the SQL UDFs
(``udf.arrow_calls.answer_batch``): rows whose fields are all NULL (None, NaN, NA, NaT) are NULL without a
call, identical inputs are asked once, the distinct inputs are ordered so prompts share prefixes and sent as one
ordered stream, answers come from and go to the session's result cache, and a row whose request fails is NULL
with its reason in ``last_stats(df).error_reasons`` (or raises with ``on_error='raise'``). The prompts name the
fields after the columns, as a lifted SQL stage does, so ``df.llm.map(instr, "review")`` gives exactly
``SELECT llm(instr, review) FROM df`` on the same rows (greedy decoding). With no columns named, every column of
the frame is a field.

Options. Keyword arguments of a method that are function options (``max_tokens``, ``model``, ``temperature``,
``system``, ``reorder_fields``, ...; see ``udf.options``) are that call's options struct; ``session=`` picks the
session: a ``Session`` from ``configure``/``llm_sql.pandas.session(...)``, or a connection registered with
``llm_sql.register`` (the DataFrame calls then share its engines, result cache and settings). Without it, the
session of the last ``configure``.

Values. ``map`` (``llm``) and ``classify`` give object columns (str or None), ``score`` a nullable ``Int32``
column, ``extract`` one column per schema field (nullable ints and booleans, float64, object for text, lists and
structs), or, with ``into=``, one column of dicts. ``filter`` keeps the rows whose answer is true (NULL is
dropped, as in SQL's WHERE). An existing column named by ``into`` is replaced in place. Column positions are
kept; nothing is aligned on the index, so a frame with a duplicated index works.

Modin. On a ``modin.pandas.DataFrame`` the accessor reads the frame's row partitions one at a time
(``modin.distributed.dataframe.pandas.unwrap_partitions``), each one an Arrow batch through the same path on the
one engine of the session (as Spark's Arrow batches are), and builds the result as a Modin frame: the frame is
never collected into one pandas frame. Dedup and reordering are per partition; the result cache spans them.
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd
import pyarrow as pa

from llm_sql.session import QueryStats, Session

MAX_REASONS = 20

_DEFAULT: Session | None = None
_LOCK = threading.Lock()
_STATS: dict[int, tuple[weakref.ref, QueryStats]] = {}  # id(frame) -> (weak ref to it, stats of the op)


# -- sessions ---------------------------------------------------------------------------------------------
def configure(**options: Any) -> Session:
    """Create the default session of the DataFrame accessor from ``llm_sql.register``'s options (``model=DIR``,
    ``models={...}``, ``backend=``, ``cache=``, ``dedup=``, ``reorder=``, ``on_error=``, ``max_tokens=``, ...) and
    return it; a previous default session is closed."""
    global _DEFAULT
    new = Session(**options)
    with _LOCK:
        old, _DEFAULT = _DEFAULT, new
    if old is not None:
        old.close()
    return new


def session(**options: Any) -> Session:
    """A session of its own (not the default), for ``session=``; the caller closes it."""
    return Session(**options)


def close() -> None:
    """Close the default session (its engines are freed)."""
    global _DEFAULT
    with _LOCK:
        old, _DEFAULT = _DEFAULT, None
    if old is not None:
        old.close()


def session_of(session: Any = None) -> Session:
    """The ``Session`` a call runs in: ``session`` itself, a registered DuckDB connection's, or the default."""
    if session is None:
        if _DEFAULT is None:
            raise RuntimeError("no llm-sql session for DataFrames: call llm_sql.pandas.configure(model=DIR, ...) "
                               "first, or pass session=")
        return _DEFAULT
    if isinstance(session, Session):
        return session
    inner = getattr(session, "session", None)
    if isinstance(inner, Session):  # an LLMConnection
        return inner
    from llm_sql.duckdb_mode import _wrapper

    try:
        return _wrapper(session).session
    except (ValueError, TypeError):
        raise TypeError(f"session= must be an llm_sql Session or a connection registered with llm_sql.register, "
                        f"got {type(session).__name__}") from None


# -- statistics -------------------------------------------------------------------------------------------
def _remember(stats: QueryStats, *frames: Any) -> None:
    with _LOCK:
        for ref_id in [k for k, (ref, _) in _STATS.items() if ref() is None]:
            del _STATS[ref_id]
        for f in frames:
            try:
                _STATS[id(f)] = (weakref.ref(f), stats)
            except TypeError:  # not weak-referenceable: only the session keeps the stats
                pass


def last_stats(obj: Any) -> QueryStats:
    """The ``QueryStats`` of the last accessor call that read or returned the frame ``obj`` (or, for a session,
    of its last call)."""
    if isinstance(obj, Session):
        return obj.last
    with _LOCK:
        entry = _STATS.get(id(obj))
    if entry is None or entry[0]() is not obj:
        raise ValueError("no llm-sql DataFrame call read or returned this frame (call df.llm.filter/map/... first)")
    return entry[1]


def is_frame(obj: Any) -> bool:
    """A pandas or Modin DataFrame (what ``llm_sql.last_stats`` hands here)."""
    return isinstance(obj, pd.DataFrame) or _is_modin(obj)


def _is_modin(obj: Any) -> bool:
    return type(obj).__module__.startswith("modin.") and hasattr(obj, "_query_compiler")


# -- frames to Arrow batches ------------------------------------------------------------------------------
def _field_names(frame: Any, columns: Sequence[Any]) -> list[Any]:
    cols = list(columns) if columns else list(frame.columns)
    if not cols:
        raise ValueError("the frame has no columns to use as fields")
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise KeyError(f"no column(s) {', '.join(map(repr, missing))} in the frame; its columns are "
                       f"{', '.join(map(repr, frame.columns))}")
    dup = sorted({repr(c) for c in cols if list(frame.columns).count(c) > 1})
    if dup:
        raise ValueError(f"column name(s) {', '.join(dup)} appear more than once in the frame: rename them first")
    names = [str(c) for c in cols]
    if len(set(names)) != len(names):
        raise ValueError(f"the fields {names!r} repeat a name: name each column once")
    return cols


def _to_arrow(series: pd.Series) -> pa.Array:
    """One column as Arrow, missing values (None, NaN, NA, NaT) as NULL, as DuckDB reads a pandas frame."""
    try:
        arr = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # mixed Python types in an object column: their text, as DuckDB would read such a column as VARCHAR
        arr = pa.array([None if _missing(v) else str(v) for v in series], type=pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):  # categoricals: their values
        arr = arr.cast(arr.type.value_type)
    return arr


def _batch_args(function: str, part: pd.DataFrame, cols: Sequence[Any], instruction: str | None,
                labels: Sequence[str] | None, options: dict[str, Any]) -> tuple[pa.Array, ...]:
    """The UDF arguments of one batch, as DuckDB hands them: instruction, one named-fields STRUCT, labels,
    options STRUCT."""
    n = len(part)
    fields = pa.StructArray.from_arrays([_to_arrow(part[c].reset_index(drop=True)) for c in cols],
                                        names=[str(c) for c in cols])
    args: list[pa.Array] = []
    if instruction is not None:
        args.append(pa.array([instruction] * n, type=pa.string()))
    args.append(fields)
    if labels is not None:
        args.append(pa.array([list(labels)] * n, type=pa.list_(pa.string())))
    if options:
        args.append(pa.array([options] * n))
    return tuple(args)


def _partitions(frame: Any, cols: Sequence[Any]) -> Iterator[pd.DataFrame]:
    """The frame's rows as pandas batches: the frame itself (pandas), or one Modin row partition at a time."""
    if not _is_modin(frame):
        yield frame
        return
    if len(frame) == 0:  # no partition holds a row: an empty batch of the right dtypes
        yield pd.DataFrame({c: pd.Series([], dtype=frame.dtypes[c]) for c in cols})
        return
    from modin.distributed.dataframe.pandas import unwrap_partitions

    for part in unwrap_partitions(frame[list(cols)], axis=0):
        yield _materialize(part)


def _materialize(part: Any) -> pd.DataFrame:
    if isinstance(part, pd.DataFrame):  # the local (python) engine: partitions are in-process frames
        return part
    try:  # Ray: an object ref
        import ray

        if isinstance(part, ray.ObjectRef):
            return ray.get(part)
    except ImportError:
        pass
    if hasattr(part, "result"):  # Dask: a future
        return part.result()
    raise TypeError(f"cannot read a Modin partition of type {type(part).__name__}")


class _Collector:
    """``answer_batch``'s ``on_output``: sums the stats and keeps every row's reason, in row order."""

    def __init__(self, stats: QueryStats):
        self.stats = stats
        self.batch_errors: list[str | None] = []

    def __call__(self, call, out, target) -> None:
        self.stats.add(out.stats)
        self.batch_errors = list(out.errors)
        for e in out.errors:
            if e is not None and len(self.stats.error_reasons) < MAX_REASONS:
                self.stats.error_reasons.append(e)


def _stage_entry(function: str, call_sql: str, fields: list[str], s: QueryStats, batches: int) -> dict[str, Any]:
    return {"stage": 0, "call": call_sql, "role": "dataframe", "fields": fields, "batches": batches,
            "rows_in": s.rows_in,
            "distinct_inputs": s.distinct_inputs, "llm_calls": s.llm_calls, "cache_hits": s.cache_hits,
            "errors": s.errors, "prompt_tokens": s.prompt_tokens, "cached_prompt_tokens": s.cached_prompt_tokens,
            "prefix_hit_rate": s.prefix_hit_rate, "generated_tokens": s.generated_tokens,
            "solve_seconds": s.solve_seconds, "llm_seconds": s.llm_seconds}


def answer(function: str, frame: Any, instruction: str | None, columns: Sequence[Any], *,
           labels: Sequence[str] | None = None, session: Any = None, **options: Any
           ) -> tuple[list[pa.Array], list[str | None], QueryStats]:
    """Answer ``function`` for every row of ``frame`` (pandas or Modin): (one Arrow array of values per batch,
    every row's failure reason or None, the stats). The lower layer of the accessor's methods."""
    from udf.arrow_calls import answer_batch
    from udf.functions import make_call
    from udf.options import validate_options

    start = time.perf_counter()
    sess = session_of(session)
    cols = _field_names(frame, columns)
    opts = dict(validate_options(options, where="option"))
    # bad input is an error even on an empty frame (no batch would reach the UDF's validation)
    call = make_call(function, instruction=instruction, field_names=[str(c) for c in cols], labels=labels,
                     options=opts)
    if function == "llm_extract":
        from udf.functions import output_of
        from udf.options import merge_options

        output_of(merge_options(sess.defaults, call.options))
    stats = QueryStats(optimized=sess.optimize)
    collect = _Collector(stats)
    arrays: list[pa.Array] = []
    errors: list[str | None] = []
    for part in _partitions(frame, cols):
        collect.batch_errors = []
        arr = answer_batch(function, _batch_args(function, part, cols, instruction, labels, opts), sess.route,
                           sess.udf_settings, result_cache=sess.result_cache, on_output=collect)
        arrays.append(arr)
        errors.extend(collect.batch_errors if collect.batch_errors else [None] * len(part))
    stats.total_seconds = time.perf_counter() - start
    stats.stages.append(_stage_entry(function, _call_sql(function, instruction, cols, labels), [str(c) for c in cols],
                                     stats, len(arrays)))
    sess.last = stats
    return arrays, errors, stats


def _call_sql(function: str, instruction: str | None, cols: Sequence[Any], labels: Sequence[str] | None) -> str:
    args = ([repr(instruction)] if instruction is not None else []) + [str(c) for c in cols]
    if labels is not None:
        args.append(repr(list(labels)))
    return f"{function}({', '.join(args)})"


# -- Arrow values back to pandas --------------------------------------------------------------------------
def _pandas_values(arr: pa.Array):
    """A column's values for ``frame[col] = ...``: nullable ints and booleans, float64, else objects."""
    t = arr.type
    values = arr.to_pylist()
    if pa.types.is_integer(t):
        return pd.array(values, dtype={8: "Int8", 16: "Int16", 32: "Int32", 64: "Int64"}[t.bit_width])
    if pa.types.is_boolean(t):
        return pd.array(values, dtype="boolean")
    if pa.types.is_floating(t):
        return pd.array([float("nan") if v is None else v for v in values], dtype="float64")
    out = pd.array([None] * len(values), dtype=object) if values else pd.array([], dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _concat(arrays: list[pa.Array], arrow_type: pa.DataType | None = None) -> pa.Array:
    arrays = [a for a in arrays if len(a)] or arrays[:1]
    if not arrays:
        return pa.array([], type=arrow_type or pa.null())
    typed = [a for a in arrays if not pa.types.is_null(a.type)]
    if typed and len(typed) != len(arrays):
        arrays = [a if not pa.types.is_null(a.type) else pa.nulls(len(a), typed[0].type) for a in arrays]
    return pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]


def _with_columns(frame: Any, new: dict[str, Any]) -> Any:
    """A copy of ``frame`` with the columns set positionally (existing names replaced in place)."""
    out = frame.copy()
    for name, values in new.items():
        out[name] = values  # an array: set by position, never aligned on the index
    return out


# -- the accessor -----------------------------------------------------------------------------------------
class LLMAccessor:
    """``df.llm``: the LLM functions over a DataFrame's columns (see the module doc)."""

    def __init__(self, frame: Any):
        self._frame = frame

    def _done(self, result: Any, stats: QueryStats) -> Any:
        _remember(stats, self._frame, result)
        return result

    def filter(self, instruction: str, *columns: Any, session: Any = None, **options: Any):
        """The rows for which ``llm_filter(instruction, columns...)`` is true (NULL rows dropped), index kept."""
        arrays, _, stats = answer("llm_filter", self._frame, instruction, columns, session=session, **options)
        mask = _concat(arrays, pa.bool_()).to_pylist()
        import numpy as np

        keep = np.flatnonzero(np.array([v is True for v in mask], dtype=bool))
        return self._done(self._frame.iloc[keep], stats)

    def _map(self, function: str, instruction: str | None, columns: Sequence[Any], into: str,
             labels: Sequence[str] | None, session: Any, options: dict[str, Any], errors_into: str | None):
        if not isinstance(into, str) or not into:
            raise ValueError(f"into= must be a non-empty column name, got {into!r}")
        arrays, errors, stats = answer(function, self._frame, instruction, columns, labels=labels, session=session,
                                       **options)
        from udf.registry import spec_of

        values = _concat(arrays, spec_of(function).arrow_type)
        new = {into: _pandas_values(values)}
        if errors_into is not None:
            new[errors_into] = _pandas_values(pa.array(errors, type=pa.string()))
        return self._done(_with_columns(self._frame, new), stats)

    def map(self, instruction: str, *columns: Any, into: str = "llm", errors_into: str | None = None,
            session: Any = None, **options: Any):
        """The frame with ``into`` = ``llm(instruction, columns...)`` (text, None where NULL); ``errors_into=``
        adds a column with each failed row's reason."""
        return self._map("llm", instruction, columns, into, None, session, options, errors_into)

    def classify(self, *columns: Any, labels: Iterable[str], into: str = "label", errors_into: str | None = None,
                 session: Any = None, **options: Any):
        """The frame with ``into`` = ``llm_classify(columns..., labels)``: one of the labels per row."""
        if labels is None or isinstance(labels, str):
            raise ValueError("classify needs labels=[...]: a list of distinct strings")
        return self._map("llm_classify", None, columns, into, list(labels), session, options, errors_into)

    def score(self, instruction: str, *columns: Any, into: str = "score", errors_into: str | None = None,
              session: Any = None, **options: Any):
        """The frame with ``into`` = ``llm_score(instruction, columns...)``: a nullable Int32 in 1..5."""
        return self._map("llm_score", instruction, columns, into, None, session, options, errors_into)

    def extract(self, instruction: str, *columns: Any, schema: str, into: str | None = None,
                errors_into: str | None = None, session: Any = None, **options: Any):
        """``llm_extract(instruction, columns..., {'schema': schema})``: one new column per schema field (named
        after the fields; existing ones replaced), or with ``into=`` one column of dicts."""
        arrays, errors, stats = answer("llm_extract", self._frame, instruction, columns, session=session,
                                       schema=schema, **options)
        from udf.extract import output_schema

        struct_type = output_schema(schema).arrow_type
        values = _concat(arrays, struct_type)
        if pa.types.is_null(values.type):
            values = pa.nulls(len(values), struct_type)
        if into is not None:
            new = {into: _pandas_values(values)}
        else:
            new = {}
            for i, fld in enumerate(struct_type):
                child = values.field(i)
                if values.null_count:  # a NULL struct's children are NULL too
                    import pyarrow.compute as pc

                    child = pc.if_else(values.is_null(), pa.nulls(len(child), child.type), child)
                new[fld.name] = _pandas_values(child)
        if errors_into is not None:
            new[errors_into] = _pandas_values(pa.array(errors, type=pa.string()))
        return self._done(_with_columns(self._frame, new), stats)

    def join(self, other: Any, instruction: str, *, left_on: str, right_on: str, suffixes: tuple[str, str] = ("_x", "_y"),
             session: Any = None, **options: Any):
        """The pairs of rows (this frame's, ``other``'s) for which ``llm_filter(instruction, left_on, right_on)`` is
        true: ``SELECT l.*, r.* FROM self l JOIN other r ON llm_filter(instruction, l.left_on, r.right_on)``, run by
        DuckDB with this session, so it is planned as that SQL is (a stage over the distinct pairs; with
        ``multi_label=True``, one call per value of the larger side). A new frame with a fresh index; columns that
        both frames have get ``suffixes``. Modin frames come to pandas: every pair may match."""
        import duckdb

        from llm_sql.duckdb_mode import attach
        from udf.options import validate_options

        sess = session_of(session)
        left, right = (f._to_pandas() if _is_modin(f) else f for f in (self._frame, other))
        _field_names(left, [left_on])
        _field_names(right, [right_on])
        con = duckdb.connect()
        try:
            con.register("__llm_left", left.reset_index(drop=True))
            con.register("__llm_right", right.reset_index(drop=True))
            both = set(left.columns) & set(right.columns)
            cols = [f"l.{_quote(c)} AS {_quote(f'{c}{suffixes[0]}' if c in both else c)}" for c in left.columns]
            cols += [f"r.{_quote(c)} AS {_quote(f'{c}{suffixes[1]}' if c in both else c)}" for c in right.columns]
            opts = dict(validate_options(options, where="option"))
            struct = (", {" + ", ".join(f"'{k}': {_sql_literal(v)}" for k, v in opts.items()) + "}") if opts else ""
            sql = (f"SELECT {', '.join(cols)} FROM __llm_left l JOIN __llm_right r ON llm_filter("
                   f"{_sql_literal(instruction)}, l.{_quote(left_on)}, r.{_quote(right_on)}{struct})")
            result = attach(con, sess).sql(sql).df()
        finally:
            con.close()
        return self._done(result, sess.last)

    def agg(self, instruction: str, column: Any, by: Any = None, *, into: str = "llm_agg",
            errors_into: str | None = None, session: Any = None, **options: Any):
        """``llm_agg(instruction, column)`` per group of ``by`` (a column name, a list of them, or None for the whole
        frame as one group), as ``SELECT by..., llm_agg(instruction, column) FROM df GROUP BY by...``: a new frame
        with the ``by`` columns and ``into``, one row per group, groups in sorted key order (missing keys form a
        group, last). Missing values are skipped; a group with none is None. See ``udf.agg``: the groups are
        answered together, level by level of the hierarchy, through the same batch path."""
        from udf.agg import FUNCTION, aggregate
        from udf.options import validate_options

        if not isinstance(into, str) or not into:
            raise ValueError(f"into= must be a non-empty column name, got {into!r}")
        start = time.perf_counter()
        sess = session_of(session)
        keys = [] if by is None else [by] if isinstance(by, str) or not isinstance(by, Iterable) else list(by)
        frame = self._frame
        _field_names(frame, [column, *keys])
        if _is_modin(frame):  # a group needs all its values: the two or three columns come to pandas
            frame = frame[[*keys, column]]._to_pandas()
        opts = dict(validate_options(options, where="option"))
        if keys:
            lists = frame.groupby(keys, dropna=False, sort=True)[column].agg(list).reset_index()
            result = lists[keys].copy()
            groups = list(lists[column])
        else:
            result = pd.DataFrame(index=range(1))
            groups = [list(frame[column])]
        groups = [[None if _missing(v) else v for v in g] for g in groups]
        out = aggregate(instruction, groups, sess.route, settings=sess.udf_settings, result_cache=sess.result_cache,
                        options=opts)
        stats = QueryStats(optimized=sess.optimize)
        stats.add(out.stats)
        stats.error_reasons = [e for e in out.errors if e is not None][:MAX_REASONS]
        stats.total_seconds = time.perf_counter() - start
        stats.stages.append(_stage_entry(FUNCTION, f"{FUNCTION}({instruction!r}, {column})", [str(column)], stats, 1))
        sess.last = stats
        result[into] = _pandas_values(pa.array(out.values, type=pa.string()))
        if errors_into is not None:
            result[errors_into] = _pandas_values(pa.array(out.errors, type=pa.string()))
        return self._done(result, stats)


def _sql_literal(value: Any) -> str:
    """An option value as a DuckDB literal (strings, numbers, booleans, lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_sql_literal(v) for v in value) + "]"
    raise ValueError(f"cannot pass the option value {value!r} to SQL")


def _quote(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _missing(v: Any) -> bool:
    """A missing value as pandas writes one (None, NA, NaT, NaN): NULL, as DuckDB reads a pandas frame."""
    from udf.prompts import is_null

    return is_null(v) or (isinstance(v, float) and v != v)


def _register_accessors() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "registration of accessor ... is overriding": a reload
        pd.api.extensions.register_dataframe_accessor("llm")(LLMAccessor)
    import importlib.util

    if importlib.util.find_spec("modin") is None:
        return
    try:
        from modin.pandas.api.extensions import register_dataframe_accessor
    except ImportError:  # an old Modin without the extensions API: pandas only
        return
    register_dataframe_accessor("llm")(property(LLMAccessor))


_register_accessors()

__all__ = ["configure", "session", "close", "session_of", "last_stats", "answer", "LLMAccessor"]
