package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.plans.logical.Filter;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;

/**
 * Cheap predicates before LLM predicates: a {@code Filter(c1 AND llm_filter(..) AND c2)} becomes
 * {@code Filter(llm_filter(..), Filter(c1 AND c2, child))}, so the LLM only sees rows that pass the
 * cheap conjuncts (Spark would otherwise evaluate the Python UDF on every row of the child).
 * Conjuncts keep their relative order; a filter whose conjuncts are all cheap or all LLM is left alone.
 */
public class CheapPredicatesFirst extends LLMRule {
  public CheapPredicatesFirst(SparkSession session) {}

  @Override
  LogicalPlan rewrite(LogicalPlan p) {
    if (!(p instanceof Filter)) {
      return p;
    }
    Filter f = (Filter) p;
    List<Expression> conjuncts = new ArrayList<>();
    LLMPlans.splitAnd(f.condition(), conjuncts);
    List<Expression> cheap = new ArrayList<>();
    List<Expression> llm = new ArrayList<>();
    for (Expression c : conjuncts) {
      (LLMPlans.containsLLM(c) ? llm : cheap).add(c);
    }
    if (cheap.isEmpty() || llm.isEmpty()) {
      return p;
    }
    // Moving a conjunct below another is only safe when the cheap ones are deterministic.
    for (Expression c : cheap) {
      if (!c.deterministic()) {
        return p;
      }
    }
    return new Filter(LLMPlans.andAll(llm), new Filter(LLMPlans.andAll(cheap), f.child()));
  }
}
