package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.expressions.Alias;
import org.apache.spark.sql.catalyst.expressions.Attribute;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.NamedExpression;
import org.apache.spark.sql.catalyst.expressions.NamedExpression$;
import org.apache.spark.sql.catalyst.expressions.PythonUDF;
import org.apache.spark.sql.catalyst.expressions.aggregate.AggregateExpression;
import org.apache.spark.sql.catalyst.plans.logical.Aggregate;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.Project;

/**
 * Moves LLM calls that are arguments of aggregate functions ({@code AVG(llm_score(..))}) out of the
 * {@code Aggregate} into a {@code Project} below it, so that {@link DeduplicateLLMCalls} and
 * {@link OrderRowsForPrefixes} see them like any projected call. Only calls inside an aggregate
 * function whose inputs are columns of the aggregate's child move; calls over grouping keys stay
 * (they run once per group already).
 */
public class PullLLMOutOfAggregates extends LLMRule {
  public PullLLMOutOfAggregates(SparkSession session) {}

  @Override
  LogicalPlan rewrite(LogicalPlan p) {
    if (!(p instanceof Aggregate)) {
      return p;
    }
    Aggregate agg = (Aggregate) p;
    LogicalPlan child = agg.child();
    List<Alias> pulled = new ArrayList<>();
    List<NamedExpression> newAggs = new ArrayList<>();
    for (NamedExpression n : LLMPlans.list(agg.aggregateExpressions())) {
      newAggs.add((NamedExpression) pull((Expression) n, false, child, pulled));
    }
    if (pulled.isEmpty()) {
      return p;
    }
    List<NamedExpression> below = new ArrayList<>();
    for (Attribute a : LLMPlans.list(child.output())) {
      below.add(a);
    }
    below.addAll(pulled);
    return new Aggregate(agg.groupingExpressions(), LLMPlans.seq(newAggs),
        new Project(LLMPlans.seq(below), child), agg.hint());
  }

  private static Expression pull(Expression e, boolean inAggFunction, LogicalPlan child,
      List<Alias> pulled) {
    if (inAggFunction && LLMPlans.isLLM(e)) {
      PythonUDF u = (PythonUDF) e;
      if (u.udfDeterministic() && u.references().subsetOf(child.outputSet())) {
        for (Alias a : pulled) {
          if (a.child().semanticEquals(u)) {
            return a.toAttribute();
          }
        }
        Alias a = new Alias(u, "_llm_arg_" + pulled.size(), NamedExpression$.MODULE$.newExprId(),
            LLMPlans.<String>seq(new ArrayList<>()), scala.Option.empty(),
            LLMPlans.<String>seq(new ArrayList<>()));
        pulled.add(a);
        return a.toAttribute();
      }
      return e;
    }
    boolean inside = inAggFunction || e instanceof AggregateExpression;
    return LLMPlans.mapChildren(e, x -> pull(x, inside, child, pulled));
  }
}
