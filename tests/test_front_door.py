"""The front door: one configuration for DuckDB and Spark, several named models per session, the option
``model`` routing a call to its model, and an instruction with no field.

Two tiny random checkpoints of different seeds answer differently, so a call that reached the wrong model is
seen in its tokens: each routed answer must equal that model's own engine, evaluated plainly.
"""
from __future__ import annotations

import duckdb
import pytest

import llm_sql
from llm_sql.config import make_config

REVIEWS = ["Crisp and clean, lovely hops.", "Tasted like wet cardboard.", "Rich coffee notes, great stout.",
           "Flat and overly sweet.", "Crisp and clean, lovely hops."]
COMMON = dict(cache=False, progress=False, max_tokens=4)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    from engine_backend.testing import make_tiny_model

    root = tmp_path_factory.mktemp("front_door")
    return str(make_tiny_model(root / "small", arch="llama", seed=1)), str(make_tiny_model(root / "large",
                                                                                           arch="llama", seed=2))


@pytest.fixture()
def con():
    c = duckdb.connect()
    c.execute("CREATE TABLE t AS SELECT * FROM (VALUES " + ", ".join(
        f"({i}, '{r}')" for i, r in enumerate(REVIEWS)) + ") v(id, review)")
    yield c
    c.close()


@pytest.mark.parametrize("optimize", [True, False], ids=["lifted", "udf"])
def test_model_option_routes_to_that_model(two_models, con, optimize, own_answers):
    small, large = two_models
    db = llm_sql.register(con, models={"small": small, "large": large}, model="small", optimize=optimize, **COMMON)
    rows = [(r,) for r in REVIEWS]
    own_small, own_large = own_answers(small, rows), own_answers(large, rows)
    assert own_small != own_large  # the two checkpoints are told apart by their answers
    default = [r[0] for r in db.sql("SELECT llm('Summarise', review) FROM t ORDER BY id").fetchall()]
    routed = [r[0] for r in db.sql("SELECT llm('Summarise', review, {'model': 'large'}) FROM t ORDER BY id")
              .fetchall()]
    assert default == own_small
    assert routed == own_large
    db.close()


def test_one_query_two_models_and_the_result_cache_keeps_them_apart(two_models, con, tmp_path, own_answers):
    small, large = two_models
    opts = dict(COMMON, cache=True, cache_path=str(tmp_path / "r.sqlite"))
    db = llm_sql.register(con, models={"small": small, "large": large}, **opts)  # default: the first
    sql = ("SELECT llm('Summarise', review) AS a, llm('Summarise', review, {'model': 'large'}) AS b "
           "FROM t ORDER BY id")
    first = db.sql(sql).fetchall()
    rows = [(r,) for r in REVIEWS]
    assert [r[0] for r in first] == own_answers(small, rows)
    assert [r[1] for r in first] == own_answers(large, rows)
    assert db.sql(sql).fetchall() == first and llm_sql.last_stats(con).llm_calls == 0  # all from the cache
    db.close()


def test_unknown_model_is_a_clear_error(two_models, con):
    small, large = two_models
    db = llm_sql.register(con, models={"small": small, "large": large}, **COMMON)
    with pytest.raises(Exception, match="unknown model 'huge'.*small, large"):
        db.sql("SELECT llm('Summarise', review, {'model': 'huge'}) FROM t").fetchall()
    db.close()
    with pytest.raises(ValueError, match="unknown model 'huge'"):
        make_config(models={"small": small}).model("huge")
    with pytest.raises(ValueError, match="must name the default among models: small"):
        make_config(models={"small": small}, model="large")
    with pytest.raises(TypeError, match=r"models\['x'\]: unknown key\(s\) dir"):
        make_config(models={"x": {"dir": small}})
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        make_config(models={"x": str(small) + "-missing"})
    with pytest.raises(ValueError, match="preemption must be 'auto', 'swap' or 'recompute'"):
        make_config(model=small, preemption="sometimes")  # before any engine loads
    assert dict(make_config(model=small, swap_space="1GiB", preemption="swap").model().engine_options)[
        "swap_space"] == "1GiB"


def test_config_entries_and_identities(two_models):
    small, large = two_models
    cfg = make_config(models={"small": small, "big": {"model": large, "kv_cache_memory": "64MiB"},
                              "remote": "http://127.0.0.1:9/v1"}, model="big")
    assert cfg.model().name == "big" and dict(cfg.model().engine_options)["kv_cache_memory"] == "64MiB"
    remote = cfg.model("remote")
    assert remote.backend == "openai" and remote.base_url == "http://127.0.0.1:9/v1"
    assert len({m.identity for m in cfg.models}) == 3  # answers of different models never share cache keys
    one = make_config(model=small)
    assert one.model(small).name == one.model().name == small  # a one-model session: named by its directory


def test_instruction_without_a_field(two_models, con, own_answers):
    small, _ = two_models
    for optimize in (True, False):
        db = llm_sql.register(con, model=small, optimize=optimize, **COMMON)
        got = [r[1] for r in db.sql("SELECT id, llm('Say hi') FROM t ORDER BY id").fetchall()]
        assert len(got) == len(REVIEWS) and len(set(got)) == 1 and got[0]  # one prompt, asked once
        assert got[0] == own_answers(small, [()], instruction="Say hi", names=())[0]
        db.close()


def test_speculative_decoding_through_register_leaves_answers_unchanged(two_models, con, own_answers):
    """``register(speculative=...)`` reaches the embedded engine (checked before it loads) and changes no answer."""
    small, _ = two_models
    with pytest.raises(ValueError, match="speculative method must be one of"):
        make_config(model=small, speculative={"method": "medusa"})
    cfg = make_config(model=small, speculative={"method": ["ngram", "batch"], "num_speculative_tokens": 3})
    assert '"num_speculative_tokens": 3' in cfg.model().backend_kwargs()["speculative"]  # JSON text: hashable
    hash(cfg.model())
    db = llm_sql.register(con, model=small, speculative="ngram", **COMMON)
    got = [r[0] for r in db.sql("SELECT llm('Summarise', review) FROM t ORDER BY id").fetchall()]
    assert got == own_answers(small, [(r,) for r in REVIEWS])
    db.close()
