package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.plans.Inner$;
import org.apache.spark.sql.catalyst.plans.logical.Filter;
import org.apache.spark.sql.catalyst.plans.logical.Join;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;

/**
 * An LLM predicate in an inner join's condition becomes a filter over the join on the other conjuncts:
 *
 * <pre>
 *   Join Inner, (a.style = b.style AND llm_filter('..', struct(a.review, b.flavour)))
 *   ==>  Filter llm_filter('..', struct(a.review, b.flavour))
 *        +- Join Inner, (a.style = b.style)
 * </pre>
 *
 * For an inner join the two are the same rows. Spark would evaluate the UDF over the joined pairs anyway (its
 * {@code ExtractPythonUDFFromJoinCondition}), but only after the llm-sql rules have run; lifted here, first, the
 * rules that follow see an LLM filter over the pairs that pass the cheap keys: {@link DeduplicateLLMCalls} asks
 * each distinct pair once and {@link OrderRowsForPrefixes} orders them. Outer and semi joins are left alone: there
 * the condition decides which rows are kept, not only which pairs match.
 */
public class LiftLLMJoinConditions extends LLMRule {
  public LiftLLMJoinConditions(SparkSession session) {}

  @Override
  LogicalPlan rewrite(LogicalPlan p) {
    if (!(p instanceof Join) || ((Join) p).joinType() != Inner$.MODULE$ || ((Join) p).condition().isEmpty()) {
      return p;
    }
    Join j = (Join) p;
    List<Expression> conjuncts = new ArrayList<>();
    LLMPlans.splitAnd(j.condition().get(), conjuncts);
    List<Expression> keys = new ArrayList<>();
    List<Expression> llm = new ArrayList<>();
    for (Expression c : conjuncts) {
      (LLMPlans.containsLLM(c) ? llm : keys).add(c);
    }
    if (llm.isEmpty()) {
      return p;
    }
    scala.Option<Expression> rest = keys.isEmpty() ? scala.Option.empty() : scala.Option.apply(LLMPlans.andAll(keys));
    Join cheap = new Join(j.left(), j.right(), j.joinType(), rest, j.hint());
    return new Filter(LLMPlans.andAll(llm), cheap);
  }
}
