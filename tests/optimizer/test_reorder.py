"""optimizer.reorder: GGR on hand-checked tables, FDs, the fast variant against GGR, metrics, edge cases."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optimizer import (cell_hit_rate, column_stats, fd_groups, functional_dependencies, prefix_hit_count,
                       reorder, token_hit_rate, trie_hit_rate)
from optimizer.ggr import PUBLISHED_LIMITS

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "llmsql"


def check_plan(df: pd.DataFrame, plan) -> None:
    n = len(df)
    assert sorted(plan.order) == list(range(n))
    assert len(plan.fields) == n
    for f in plan.fields:
        assert sorted(f) == sorted(map(str, df.columns))
    assert plan.solve_seconds >= 0 and 0.0 <= plan.estimated_hit_rate <= 1.0
    assert plan.estimated_hit_rate == pytest.approx(cell_hit_rate(df, plan))


# --- GGR on hand-checked tables -------------------------------------------------------------------

def test_ggr_groups_the_best_value_first():
    df = pd.DataFrame({"a": ["aa", "b", "aa", "b", "aa"], "b": ["1", "1", "2", "1", "3"]})
    # HitCount = len^2 * (count - 1): a="aa" 4*2 = 8, a="b" 1*1 = 1, b="1" 1*2 = 2  -> "aa" (rows 0, 2, 4) first;
    # inside, b has no repeats: fallback sorts on b ("1" < "2" < "3"). The rest (rows 1, 3): a="b" and b="1"
    # both score 1; the tie goes to the earlier column a.
    plan = reorder(df, method="ggr")
    check_plan(df, plan)
    assert plan.order == [0, 2, 4, 1, 3]
    assert plan.fields == [("a", "b")] * 5
    # PHC: row 2 after 0: "aa" = 4; row 4 after 2: 4; row 1 after 4: 0; row 3 after 1: "b" 1 + "1" 1 = 2
    assert prefix_hit_count(df, plan) == 10
    # sum of len^2: a 4+1+4+1+4 = 14, b 5 * 1 = 5
    assert cell_hit_rate(df, plan) == pytest.approx(10 / 19)
    assert reorder(df, method="fast").estimated_hit_rate == pytest.approx(10 / 19)


def test_ggr_orders_fields_per_row():
    df = pd.DataFrame({"a": ["xxx", "xxx", "p", "q"], "b": ["1", "2", "yy", "yy"]})
    # a="xxx": 9*1 = 9 beats b="yy": 4*1 = 4, so rows 0, 1 lead with a; the rest (2, 3) then group on b="yy",
    # so they lead with b.
    for method in ("ggr", "fast"):
        plan = reorder(df, method=method, distinct_threshold=1.0)
        check_plan(df, plan)
        assert plan.order == [0, 1, 2, 3]
        assert plan.fields == [("a", "b"), ("a", "b"), ("b", "a"), ("b", "a")]
        # row 1 after 0: "xxx" = 9; row 2: first field differs = 0; row 3 after 2: "yy" = 4
        assert prefix_hit_count(df, plan) == 13
    original = reorder(df, method="original")
    assert original.order == [0, 1, 2, 3] and original.fields == [("a", "b")] * 4
    assert prefix_hit_count(df, original) == 9  # only "xxx" is shared


def test_published_limits_fall_back_to_a_sort():
    df = pd.DataFrame({"a": ["x", "y", "x", "y"], "b": ["2", "1", "1", "2"]})
    # min_score 100,000 is never reached on this table: columns by expected hit (a: 1*1 + 1*1 = 2, b: 2; tie
    # keeps column order), rows sorted on (a, b): (x,1) row 2, (x,2) row 0, (y,1) row 1, (y,2) row 3
    plan = reorder(df, method="ggr", **PUBLISHED_LIMITS | {"distinct_threshold": 1.0})
    assert plan.order == [2, 0, 1, 3] and plan.fields == [("a", "b")] * 4


# --- functional dependencies --------------------------------------------------------------------

FD_TABLE = pd.DataFrame({
    "name": ["Long Beer Name", "Other", "Long Beer Name", "Other", "Third"],
    "style": ["IPA", "Stout", "IPA", "Stout", "IPA"],
    "x": ["1", "2", "3", "1", "2"],
})


def test_functional_dependencies_are_exact():
    assert functional_dependencies(FD_TABLE) == [("name", "style")]  # IPA -> two names, so not style -> name
    df = FD_TABLE.assign(beer_id=["7", "8", "7", "8", "9"])
    fds = set(functional_dependencies(df))
    assert {("name", "beer_id"), ("beer_id", "name"), ("beer_id", "style")} <= fds
    assert fd_groups(df) == [("name", "beer_id")]


def test_ggr_places_the_determined_column_right_after():
    # name="Long Beer Name": (14^2 + "IPA" 3^2 inferred) * 1 = 205; "Other": (25 + 25) * 1 = 50; style "IPA": 9*2 = 18
    plan = reorder(FD_TABLE, method="ggr")
    check_plan(FD_TABLE, plan)
    # rows 0, 2 led by (name, style), x sorted; then "Other" rows by x ("1" row 3, "2" row 1); then row 4
    assert plan.order == [0, 2, 3, 1, 4]
    for f in plan.fields:
        assert f.index("style") == f.index("name") + 1
    # 205 (row 2 after 0) + 50 (row 1 after 3)
    assert prefix_hit_count(FD_TABLE, plan) == 255
    fast = reorder(FD_TABLE, method="fast")
    check_plan(FD_TABLE, fast)
    assert prefix_hit_count(FD_TABLE, fast) == 255
    for f in fast.fields:  # fast puts the coarser determined column first: still adjacent
        assert abs(f.index("style") - f.index("name")) == 1


def test_fd_groups_stay_contiguous():
    rng = np.random.default_rng(1)
    names = [f"beer number {i}" for i in range(12)]
    pick = rng.integers(0, 12, 200)
    df = pd.DataFrame({"user": [f"u{u}" for u in rng.integers(0, 30, 200)], "name": [names[i] for i in pick],
                       "id": [str(100 + i) for i in pick], "stars": [str(s) for s in rng.integers(1, 6, 200)]})
    assert ("name", "id") in fd_groups(df)
    for method in ("ggr", "fast"):
        plan = reorder(df, method=method)
        check_plan(df, plan)
        for f in plan.fields:
            assert abs(f.index("name") - f.index("id")) == 1
    # without FDs the pair need not travel together, and the plan is still valid
    check_plan(df, reorder(df, fds=None))


# --- fast never below GGR -----------------------------------------------------------------------

def random_table(seed: int, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {}
    for j in range(5):
        card = int(rng.integers(2, 40))
        width = int(rng.integers(1, 25))
        values = [f"{j}-{k}-" + "x" * int(rng.integers(0, width)) for k in range(card)]
        p = rng.zipf(1.5, card).astype(float)
        cols[f"c{j}"] = [values[i] for i in rng.choice(card, n, p=p / p.sum())]
    df = pd.DataFrame(cols)
    df["c5"] = df["c0"] + "/derived"  # an FD
    return df


@pytest.mark.parametrize("seed", range(6))
def test_fast_at_least_ggr_on_generated_tables(seed):
    df = random_table(seed)
    ggr, fast = reorder(df, method="ggr"), reorder(df, method="fast")
    check_plan(df, ggr)
    check_plan(df, fast)
    assert prefix_hit_count(df, fast) >= prefix_hit_count(df, ggr)
    assert prefix_hit_count(df, ggr) > prefix_hit_count(df, reorder(df, method="original"))


def test_random_small_tables_fast_never_below_ggr():
    # up to GGR_ROWS rows GGR itself is one of fast's candidates, so this holds by construction
    for seed in range(60):
        rng = np.random.default_rng(100 + seed)
        n, m = int(rng.integers(0, 80)), int(rng.integers(1, 6))
        cols = {}
        for j in range(m):
            card = int(rng.integers(1, 10))
            vals = [None if rng.random() < 0.1 else "v" * int(rng.integers(0, 10)) + str(k) for k in range(card)]
            p = rng.random(card) ** 3 + 0.01
            cols[f"c{j}"] = [vals[i] for i in rng.choice(card, n, p=p / p.sum())]
        df = pd.DataFrame(cols)
        ggr, fast = reorder(df, method="ggr"), reorder(df, method="fast")
        check_plan(df, ggr)
        check_plan(df, fast)
        assert prefix_hit_count(df, fast) >= prefix_hit_count(df, ggr), seed


@pytest.mark.parametrize("limits", [{}, {"row_stop": 3, "col_stop": 2, "min_score": 50}])
def test_incremental_ggr_makes_the_same_plan(limits):
    """fast's GGR candidate (counts kept up to date, numpy above 40 rows) chooses exactly as ggr.py."""
    from optimizer import fast, ggr
    from optimizer.reorder import _fd_maps
    from optimizer.stats import encode

    df = random_table(7, n=600)
    enc = encode(df)
    cols = list(range(len(enc.columns)))
    deps, mutual = _fd_maps(enc, enc.columns, cols, "auto")
    make = lambda: ggr.Problem(enc, cols, deps, mutual, **limits)  # noqa: E731
    assert fast._run(make(), "ggr", np.arange(len(df))) == ggr.solve(make())


@pytest.mark.parametrize("name", ["beer", "movies_small", "contributions"])
def test_fast_at_least_ggr_on_shared_tables(name):
    path = DATA / f"{name}.csv"
    if not path.exists():
        pytest.skip(f"shared data missing: {path} (see ../shared/data/README.md)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = df.sample(min(len(df), 2000), random_state=0).reset_index(drop=True)
    ggr, fast = reorder(df, method="ggr"), reorder(df, method="fast")
    published = reorder(df, method="ggr", **PUBLISHED_LIMITS)
    check_plan(df, fast)
    assert prefix_hit_count(df, fast) >= prefix_hit_count(df, ggr)
    assert prefix_hit_count(df, fast) >= prefix_hit_count(df, published)


# --- edge cases and inputs -----------------------------------------------------------------------

def test_nulls_compare_equal_as_null():
    df = pd.DataFrame({"a": [None, "q", np.nan, "q"], "b": ["zz", "1", "zz", "2"]})
    for method in ("ggr", "fast"):
        plan = reorder(df, method=method, distinct_threshold=1.0)
        check_plan(df, plan)
        # "null" twice (16) + "zz" twice (4) after it = 20 beats "q" twice (1)
        first = plan.order[:2]
        assert sorted(first) == [0, 2] and plan.fields[0][0] in ("a", "b")
        assert prefix_hit_count(df, plan) == 16 + 4 + 1  # then the two "q" rows share "q"


@pytest.mark.parametrize("method", ["fast", "ggr", "original"])
def test_empty_single_row_single_column(method):
    empty = pd.DataFrame({"a": [], "b": []})
    plan = reorder(empty, method=method)
    assert plan.order == [] and plan.fields == [] and plan.estimated_hit_rate == 0.0
    one = pd.DataFrame({"a": ["x"], "b": ["y"]})
    plan = reorder(one, method=method)
    assert plan.order == [0] and sorted(plan.fields[0]) == ["a", "b"]
    col = pd.DataFrame({"a": ["b", "a", "b", "a", "b", "c"]})
    plan = reorder(col, method=method)
    check_plan(col, plan)
    if method != "original":
        assert prefix_hit_count(col, plan) == 3  # "a" once, "b" twice: len 1 each
    assert reorder(pd.DataFrame(index=range(3)), method=method).fields == [()] * 3


def test_inputs_arrow_and_records_and_columns():
    pa = pytest.importorskip("pyarrow")
    df = FD_TABLE
    want = reorder(df).order
    assert reorder(pa.Table.from_pandas(df)).order == want
    assert reorder(df.to_dict("records")).order == want
    sub = reorder(df, columns=["x", "style"])
    assert all(sorted(f) == ["style", "x"] for f in sub.fields)
    with pytest.raises(KeyError):
        reorder(df, columns=["nope"])
    with pytest.raises(ValueError):
        reorder(df, method="magic")


def test_high_cardinality_columns_go_last():
    df = pd.DataFrame({"id": [str(i) for i in range(10)], "g": ["aa", "bb"] * 5})
    for method in ("ggr", "fast"):
        plan = reorder(df, method=method)
        assert all(f == ("g", "id") for f in plan.fields)
        assert [df["g"][r] for r in plan.order] == ["aa"] * 5 + ["bb"] * 5


# --- metrics on tiny cases ------------------------------------------------------------------------

def test_trie_hit_rate():
    # "abc": 0; "abd": 2 (shares "ab" with "abc"); "xy": 0; "abdx": 3 ("abd"). 5 of 3+3+2+4 = 12
    assert trie_hit_rate(["abc", "abd", "xy", "abdx"]) == pytest.approx(5 / 12)
    assert trie_hit_rate([]) == 0.0
    assert trie_hit_rate(["same", "same"]) == pytest.approx(4 / 8)


def test_token_hit_rate():
    # block 2: prompt 1 misses; prompt 2 hits blocks (1,2) and (3,4) = 4 (one token, 6, is left);
    # prompt 3 = [1,2,3,4] hits (1,2) only, as the last token must be computed. 6 of 5+5+4
    assert token_hit_rate([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 4]], block_size=2) == pytest.approx(6 / 14)
    # a block hits only after a hit on every block before it
    assert token_hit_rate([[1, 2, 3, 4, 9], [0, 0, 3, 4, 9]], block_size=2) == 0.0


def test_column_stats():
    df = pd.DataFrame({"a": ["xx", None, "xx", "yyyy"], "b": [1, 2, 3, 4]})
    st = column_stats(df)
    assert st["a"].distinct == 3 and st["a"].null_count == 1 and st["a"].max_len == 4  # "null" is a value
    assert st["a"].avg_len == pytest.approx((2 + 4 + 2 + 4) / 4)
    assert st["b"].distinct_ratio == 1.0 and st["b"].avg_len == 1.0
    assert math.isclose(st["a"].distinct_ratio, 0.75)


def test_bench_quick_runs(tmp_path):
    """bench/reorder_beer.py --quick: JSON, table and PNG; fast at least GGR on every table."""
    import json
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    if not (DATA / "beer.csv").exists():
        pytest.skip(f"shared data missing: {DATA} (see ../shared/data/README.md)")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "bench/reorder_beer.py", "--quick", "--out", str(tmp_path)], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "reorder_beer.json").read_text())
    assert (tmp_path / "reorder_beer.png").stat().st_size > 1000
    for name, r in data["tables"].items():
        assert r["fast"]["cell_hit_rate"] >= r["ggr"]["cell_hit_rate"] - 1e-9, name
        assert r["fast"]["cell_hit_rate"] > r["original"]["cell_hit_rate"], name


# --- fast's level-by-level split against a per-node recursion ------------------------------------

def _split_reference(prob, rows, cols, rdepth, cdepth, prefix, out):
    """The "split" recursion written one node at a time, plainly: what optimizer/levels.py must plan."""
    from collections import Counter
    from itertools import groupby

    from optimizer.fast import _order_lead

    R, len2 = prob.rows, prob.enc.len2
    while True:
        if len(rows) <= 2 or not cols:
            tail = list(cols)
            if len(rows) == 2:  # the columns both rows agree on first, longest first
                a, b = R[rows[0]], R[rows[1]]
                same = sorted((c for c in cols if a[c] == b[c]), key=lambda c: -len2[c][a[c]])
                tail = same + [c for c in cols if c not in same]
            out.extend((r, prefix + tuple(tail)) for r in rows)
            return
        counts = {c: Counter(R[r][c] for r in rows) for c in cols}
        plain = {c: sum(int(len2[c][v]) * (k - 1) for v, k in counts[c].items()) for c in cols}
        score = {c: sum(int(prob.group_len2(c, cols)[v]) * (k - 1) for v, k in counts[c].items()) for c in cols}
        best = max(cols, key=lambda c: (score[c], -cols.index(c)))  # the first best, in column order
        limited = len(rows) < prob.min_rows or rdepth >= prob.row_stop or cdepth >= prob.col_stop
        if limited or score[best] < max(1, prob.min_score):
            order = prob.fallback_columns(plain, cols)
            out.extend((r, prefix + tuple(order)) for r in sorted(rows, key=lambda r: [R[r][c] for c in order]))
            return
        lead = _order_lead(prob, prob.lead(best, cols))
        rest = [c for c in cols if c not in lead]
        grouped = sorted((r for r in rows if counts[best][R[r][best]] >= 2), key=lambda r: [R[r][c] for c in lead])
        for _, child in groupby(grouped, key=lambda r: R[r][best]):
            _split_reference(prob, list(child), rest, rdepth, cdepth + 1, prefix + tuple(lead), out)
        rows = [r for r in rows if counts[best][R[r][best]] < 2]
        rdepth += 1


@pytest.mark.parametrize("limits", [{}, {"row_stop": 3, "col_stop": 2, "min_score": 20}, {"min_rows": 5}])
def test_level_by_level_split_plans_as_the_per_node_recursion(limits):
    from optimizer import fast, ggr
    from optimizer.reorder import _fd_maps
    from optimizer.stats import encode

    for seed in range(15):
        df = random_table(seed, n=int(np.random.default_rng(seed).integers(1, 400)))
        enc = encode(df)
        cols = list(range(len(enc.columns)))
        deps, mutual = _fd_maps(enc, enc.columns, cols, "auto")
        prob = ggr.Problem(enc, cols, deps, mutual, **limits)
        want: list = []
        _split_reference(prob, list(range(len(df))), cols, 0, 0, (), want)
        assert fast._run(prob, "split", np.arange(len(df))) == want, seed


def test_fast_falls_back_like_ggr_under_limits():
    # as test_published_limits_fall_back_to_a_sort: min_score is never reached, so the whole table is one
    # fallback node with non-zero column scores
    df = pd.DataFrame({"a": ["x", "y", "x", "y"], "b": ["2", "1", "1", "2"]})
    plan = reorder(df, method="fast", **PUBLISHED_LIMITS | {"distinct_threshold": 1.0})
    assert plan.order == [2, 0, 1, 3] and plan.fields == [("a", "b")] * 4
    big = random_table(3, n=2500)  # above SAMPLE: candidates compared on a sample, the winner run on all
    plan = reorder(big, method="fast", row_stop=3, col_stop=2, min_score=50)
    check_plan(big, plan)
    assert prefix_hit_count(big, plan) > prefix_hit_count(big, reorder(big, method="original"))
