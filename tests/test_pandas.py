"""``df.llm`` (llm_sql.pandas) equals the SQL functions on the same rows, on pandas and on Modin.

The real embedded engine on a tiny random checkpoint (greedy decoding), one engine for the module, shared by the
DataFrame session and a registered DuckDB connection. The SQL side reads the same frame (``con.register``) with
a position column to line the rows up; ``reorder_fields=False`` keeps each prompt's written field order.
"""
from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pytest

import llm_sql
import llm_sql.pandas as lp
from engine_backend.backends import make_backend

REVIEWS = ["Crisp and clean, lovely hops.", "Tasted like wet cardboard.", "Rich coffee notes, great stout.",
           "Flat and overly sweet."]
STYLES = ["IPA", "Stout", "Lager"]
COMMON = dict(cache=False, progress=False, max_tokens=3, reorder_fields=False)
SCHEMA = "brewery VARCHAR, abv DOUBLE, good BOOLEAN, n INTEGER"


def frame(n: int = 24) -> pd.DataFrame:
    """Duplicates, None and NaN in text, NaN in floats, a duplicated index."""
    review = [None if i % 7 == 3 else (np.nan if i % 9 == 5 else REVIEWS[i % 4]) for i in range(n)]
    style = [None if i % 5 == 4 else STYLES[i % 3] for i in range(n)]
    abv = [np.nan if i % 6 == 1 else 4.0 + i % 3 for i in range(n)]
    return pd.DataFrame({"review": review, "style": style, "abv": abv}, index=[i // 2 for i in range(n)])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("pd") / "tiny", arch="llama"))


@pytest.fixture(scope="module")
def backend(model_dir):
    b = make_backend("embedded", model=model_dir)
    yield b
    b.close()


@pytest.fixture(scope="module")
def sess(backend, model_dir):
    s = lp.configure(backend=backend, model=model_dir, **COMMON)
    yield s
    lp.close()


@pytest.fixture(scope="module")
def con(backend, model_dir):
    c = llm_sql.register(duckdb.connect(), backend=backend, model=model_dir, **COMMON)
    yield c
    c.close()


def sql_column(con, df: pd.DataFrame, expr: str) -> list:
    """``expr`` per row of ``df`` through the optimised SQL path, in ``df``'s row order."""
    t = df.reset_index(drop=True).assign(__pos=range(len(df)))
    con.register("t", t)
    try:
        return [r[0] for r in con.sql(f"SELECT {expr} FROM t ORDER BY __pos").fetchall()]
    finally:
        con.unregister("t")


def plain(values) -> list:
    return [None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def test_map_equals_sql(sess, con):
    df = frame()
    out = df.llm.map("Summarise the review", "review", into="s")
    assert list(out.columns) == ["review", "style", "abv", "s"] and out.index.equals(df.index)
    assert out["s"].tolist() == sql_column(con, df, "llm('Summarise the review', review)")
    assert out[["review", "style", "abv"]].equals(df)  # the input columns untouched
    assert out["s"][df["review"].isna().to_numpy()].isna().all()  # NULL field: NULL
    s = llm_sql.last_stats(out)
    assert s is llm_sql.last_stats(df)
    assert s.rows_in == len(df) and s.null_inputs == int(df["review"].isna().sum())
    assert s.llm_calls == s.distinct_inputs == 4  # duplicates asked once
    assert s.prompt_tokens > 0 and s.errors == 0


def test_multi_field_and_all_columns_equal_sql(sess, con):
    df = frame()
    out = df.llm.map("Describe", "review", "style", into="d")
    assert out["d"].tolist() == sql_column(con, df, "llm('Describe', review, style)")
    every = df.llm.map("Describe", into="d")  # no columns named: every column is a field
    assert every["d"].tolist() == sql_column(con, df, "llm('Describe', review, style, abv)")


def test_filter_keeps_passing_rows_and_index(sess, con):
    df = frame()
    got = df.llm.filter("Is the review positive?", "review", "style")
    ref = sql_column(con, df, "llm_filter('Is the review positive?', review, style)")
    keep = [i for i, v in enumerate(ref) if v is True]
    assert 0 < len(keep) < len(df)  # some rows pass, some do not (NULLs among them)
    assert got.equals(df.iloc[keep])
    assert llm_sql.last_stats(got).rows_in == len(df)


def test_classify_and_score_equal_sql(sess, con):
    df = frame()
    out = df.llm.classify("review", labels=["positive", "negative"], into="c")
    assert out["c"].tolist() == sql_column(con, df, "llm_classify(review, ['positive', 'negative'])")
    out = df.llm.score("Rate the beer", "review", into="score")
    assert str(out["score"].dtype) == "Int32"
    assert plain(out["score"]) == sql_column(con, df, "llm_score('Rate the beer', review)")


def test_extract_equals_sql(sess, con):
    df = frame(12)
    out = df.llm.extract("Extract the facts", "review", schema=SCHEMA, max_tokens=48)
    ref = sql_column(con, df, f"llm_extract('Extract the facts', review, {{'schema': '{SCHEMA}', 'max_tokens': 48}})")
    for name in ("brewery", "abv", "good", "n"):
        assert plain(out[name]) == [None if r is None else r[name] for r in ref], name
    assert str(out["n"].dtype) == "Int32" and str(out["good"].dtype) == "boolean"
    one = df.llm.extract("Extract the facts", "review", schema=SCHEMA, max_tokens=48, into="facts")
    assert one["facts"].tolist() == ref


def test_per_row_reason(sess):
    df = frame(8)
    out = df.llm.extract("Extract the facts", "review", schema=SCHEMA, max_tokens=2, into="x", errors_into="why")
    failed = df["review"].notna().to_numpy()
    assert out["x"].isna().all()
    assert all("max_tokens" in w for w in out["why"][failed]) and out["why"][~failed].isna().all()
    s = llm_sql.last_stats(out)
    assert s.errors == failed.sum() and s.error_reasons and "max_tokens" in s.error_reasons[0]


def test_empty_frame(sess, con):
    df = frame().iloc[:0]
    out = df.llm.map("Summarise", "review", into="s")
    assert len(out) == 0 and list(out.columns) == ["review", "style", "abv", "s"]
    assert len(df.llm.filter("Is it good?", "review")) == 0
    assert out["s"].tolist() == sql_column(con, df, "llm('Summarise', review)") == []
    # one column a schema field; the frame's own "abv" is replaced in place
    assert list(df.llm.extract("x", "review", schema=SCHEMA).columns) == ["review", "style", "abv", "brewery", "good",
                                                                          "n"]
    s = llm_sql.last_stats(out)
    assert (s.rows_in, s.llm_calls) == (0, 0)
    with pytest.raises(ValueError, match="instruction"):  # bad input fails even with no rows
        df.llm.map("  ", "review")


def test_bad_input_is_a_clear_error(sess):
    df = frame(4)
    with pytest.raises(KeyError, match="no column"):
        df.llm.map("x", "nope")
    with pytest.raises(ValueError, match="unknown option 'max_token'"):
        df.llm.map("x", "review", max_token=3)
    with pytest.raises(ValueError, match="labels"):
        df.llm.classify("review", labels="positive")
    with pytest.raises(ValueError, match="schema"):
        df.llm.extract("x", "review", schema="a NOTATYPE")
    with pytest.raises(ValueError, match="unknown model 'big'"):
        df.llm.map("x", "review", model="big")
    with pytest.raises(ValueError, match="no llm-sql DataFrame call"):
        llm_sql.last_stats(pd.DataFrame({"a": [1]}))
    with pytest.raises(TypeError, match="session="):
        df.llm.map("x", "review", session=object())


def test_session_argument_shares_a_connection(con, backend, model_dir, tmp_path):
    df = frame(10)
    out = df.llm.map("Summarise", "review", into="s", session=con)  # the connection's session and engine
    assert lp.session_of(con) is con.session and con.session.last is llm_sql.last_stats(out)
    own = lp.session(backend=backend, model=model_dir, cache=True, cache_path=str(tmp_path / "c.sqlite"),
                     progress=False, max_tokens=3)
    try:
        first = df.llm.map("Summarise", "review", into="s", session=own)
        again = df.llm.map("Summarise", "review", into="s", session=own)
        assert first["s"].tolist() == again["s"].tolist() == out["s"].tolist()
        s = llm_sql.last_stats(again)
        assert (s.llm_calls, s.cache_hits) == (0, llm_sql.last_stats(first).llm_calls)
    finally:
        own.close()


def test_no_session_is_a_clear_error():
    saved = lp._DEFAULT
    lp._DEFAULT = None
    try:
        with pytest.raises(RuntimeError, match="configure"):
            frame(2).llm.map("x", "review")
    finally:
        lp._DEFAULT = saved


# -- Modin --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mpd():
    import os

    os.environ.setdefault("MODIN_ENGINE", "Python")  # the local engine (no Ray or Dask): in-process partitions
    modin_pandas = pytest.importorskip("modin.pandas")
    import modin.config as cfg

    size = cfg.MinRowPartitionSize.get()
    cfg.MinRowPartitionSize.put(4)
    yield modin_pandas
    cfg.MinRowPartitionSize.put(size)


@pytest.fixture()
def no_collect(monkeypatch, mpd):
    """Fail if the whole Modin frame is turned into one pandas frame."""
    def refuse(self, *a, **k):
        raise AssertionError("the Modin frame was collected into one pandas frame")

    monkeypatch.setattr(mpd.DataFrame, "_to_pandas", refuse)


def test_modin_equals_pandas_by_partitions(sess, mpd, no_collect):
    df = frame(24)
    mdf = mpd.DataFrame(df)
    from modin.distributed.dataframe.pandas import unwrap_partitions

    assert len(unwrap_partitions(mdf, axis=0)) > 1  # several row partitions
    out = mdf.llm.map("Summarise the review", "review", "style", into="s")
    s = llm_sql.last_stats(out)
    assert isinstance(out, mpd.DataFrame) and s.stages[0]["batches"] > 1
    assert out["s"].to_numpy().tolist() == df.llm.map("Summarise the review", "review", "style", into="s")["s"].tolist()
    assert list(out.index) == list(df.index)
    score = mdf.llm.score("Rate", "review", into="sc")
    assert plain(score["sc"].to_numpy()) == plain(df.llm.score("Rate", "review", into="sc")["sc"])
    got = mdf.llm.filter("Is the review positive?", "review")
    want = df.llm.filter("Is the review positive?", "review")
    assert list(got.index) == list(want.index) and got["review"].to_numpy().tolist() == want["review"].tolist()


def test_modin_empty_frame(sess, mpd):
    empty = mpd.DataFrame(frame().iloc[:0])
    out = empty.llm.map("x", "review", into="s")
    assert isinstance(out, mpd.DataFrame) and len(out) == 0 and list(out.columns) == ["review", "style", "abv", "s"]
    assert len(empty.llm.filter("x", "review")) == 0 and llm_sql.last_stats(out).llm_calls == 0


def test_join_equals_the_sql_join(sess, con):
    reviews = frame(12)
    flavours = pd.DataFrame({"flavour": ["hops", "coffee", "sweet", None], "abv": [1.0, 2.0, 3.0, 4.0]},
                            index=[5, 5, 6, 7])
    got = reviews.llm.join(flavours, "Does the review mention the flavour?", left_on="review", right_on="flavour")
    con.register("l", reviews.reset_index(drop=True))
    con.register("r", flavours.reset_index(drop=True))
    try:
        expected = con.sql("SELECT l.review, l.style, l.abv AS abv_x, r.flavour, r.abv AS abv_y FROM l JOIN r "
                           "ON llm_filter('Does the review mention the flavour?', l.review, r.flavour)").fetchall()
    finally:
        con.unregister("l")
        con.unregister("r")
    assert list(got.columns) == ["review", "style", "abv_x", "flavour", "abv_y"]
    assert 0 < len(got) < len(reviews) * len(flavours)  # some pairs pass, not all
    key = lambda row: tuple(repr(v) for v in row)  # noqa: E731
    assert sorted(map(key, plain_rows(got)), key=str) == sorted(map(key, plain_rows_tuples(expected)), key=str)
    stats = llm_sql.last_stats(got)
    assert stats.stages and stats.stages[0]["role"] == "filter"  # planned as the SQL join is: distinct pairs
    multi = reviews.llm.join(flavours, "Does the review mention the flavour?", left_on="review", right_on="flavour",
                             multi_label=True)
    distinct_reviews = reviews["review"].dropna().nunique()
    assert llm_sql.last_stats(multi).llm_calls <= distinct_reviews + 1 and set(multi.columns) == set(got.columns)


def plain_rows(df: pd.DataFrame) -> list[tuple]:
    return [tuple(plain(list(r))) for r in df.itertuples(index=False)]


def plain_rows_tuples(rows) -> list[tuple]:
    return [tuple(plain(list(r))) for r in rows]
