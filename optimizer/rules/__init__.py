"""Logical rewrite rules over sqlglot trees, one small pure function per file (sqlglot's optimizer style).

``optimizer.rewrite.plan_query`` composes them: find the LLM calls of each SELECT scope, decide which can be
lifted, split and order the WHERE conjuncts (cheap ones first, cheaper LLM predicates before costlier ones),
build the SQL that selects each call's distinct input tuples, and replace the call by a null-safe lookup
into the stage's result table. Nothing here imports ``udf``, ``llm_sql`` or ``engine_backend``: the LLM
function names come in as a parameter.
"""
from optimizer.rules.calls import CallSpec, Unliftable, call_key, contains_llm_call, is_llm_call, llm_calls, parse_call
from optimizer.rules.ctes import visible_ctes
from optimizer.rules.field_names import field_names
from optimizer.rules.joins import hoist_join_predicates, join_sides
from optimizer.rules.liftable import unliftable_reason
from optimizer.rules.lookup import IN_PREFIX, OUT_COLUMN, lookup_expr
from optimizer.rules.predicates import conjoin, is_cheap, is_volatile, order_llm_predicates, references_outside, split_conjuncts, sources_of
from optimizer.rules.scopes import owner_select, selects_post_order
from optimizer.rules.stage_sql import stage_select

__all__ = ["CallSpec", "Unliftable", "call_key", "contains_llm_call", "is_llm_call", "llm_calls", "parse_call",
           "visible_ctes", "field_names", "hoist_join_predicates", "join_sides", "unliftable_reason", "IN_PREFIX",
           "OUT_COLUMN", "lookup_expr", "conjoin", "is_cheap", "is_volatile", "order_llm_predicates",
           "references_outside", "split_conjuncts", "sources_of", "owner_select", "selects_post_order", "stage_select"]
