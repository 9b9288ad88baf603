package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.NamedExpression;
import org.apache.spark.sql.catalyst.expressions.PythonUDAF;
import org.apache.spark.sql.catalyst.expressions.aggregate.AggregateExpression;
import org.apache.spark.sql.catalyst.expressions.aggregate.CollectList;
import org.apache.spark.sql.catalyst.plans.logical.Aggregate;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;

import scala.runtime.AbstractFunction1;

/**
 * Answer every group of an Arrow batch together: an analyzer (resolution) rule that rewrites the LLM aggregate
 *
 * <pre>
 *   llm_agg(instruction, field [, options])                       -- a grouped-aggregate Arrow UDF: one group a call
 *     ==&gt;  llm_agg_list(instruction, collect_list(field) [, options])   -- a scalar Arrow UDF over the groups' lists
 * </pre>
 *
 * <p>in every {@code Aggregate} (a query without GROUP BY is one by then). Both UDFs answer a group alike
 * ({@code udf/agg.py} sorts the group's values, so collect_list's order does not matter); the rewritten form hands
 * Python the lists of all the groups of a batch at once, whose requests then go to the engine as one ordered
 * batch per level of the hierarchy instead of one small batch per group, and it may sit beside other aggregates
 * (Spark refuses to mix a grouped-aggregate Python UDF with them). {@code llm_agg_list} is looked up in the
 * session's functions ({@code llm_sql.register} registers both); where it is missing, or with
 * {@code llm_sql.optimize=false}, the call is left as it is. Other LLM calls are untouched.
 */
public class ResolveLLMAggregates extends LLMRule {
  static final String FUNCTION = "llm_agg";
  static final String LIST_FUNCTION = "llm_agg_list";

  private final SparkSession session;

  public ResolveLLMAggregates(SparkSession session) {
    this.session = session;
  }

  @Override
  boolean applies(LogicalPlan plan) {
    return LLMPlans.enabled() && has(plan);
  }

  @Override
  LogicalPlan rewrite(LogicalPlan p) {
    return p instanceof Aggregate ? rewrite((Aggregate) p) : p;
  }

  /** {@code llm_agg(...)} as the analyzer resolves a grouped-aggregate Python UDF: a PythonUDAF in an
   * AggregateExpression (without DISTINCT or FILTER, which the rewrite would drop). */
  private static boolean isAggregateCall(Expression e) {
    if (!(e instanceof AggregateExpression)) {
      return false;
    }
    AggregateExpression a = (AggregateExpression) e;
    if (!(a.aggregateFunction() instanceof PythonUDAF) || a.isDistinct() || a.filter().isDefined()) {
      return false;
    }
    PythonUDAF u = (PythonUDAF) a.aggregateFunction();
    int n = u.children().size();
    return u.name().equalsIgnoreCase(FUNCTION) && (n == 2 || n == 3) && u.childrenResolved();
  }

  private static boolean has(LogicalPlan p) {
    if (p instanceof Aggregate) {
      for (Expression e : LLMPlans.list(p.expressions())) {
        if (e.find(new AbstractFunction1<Expression, Object>() {
          @Override
          public Object apply(Expression x) {
            return isAggregateCall(x);
          }
        }).isDefined()) {
          return true;
        }
      }
    }
    for (LogicalPlan c : LLMPlans.list(p.children())) {
      if (has(c)) {
        return true;
      }
    }
    return false;
  }

  private LogicalPlan rewrite(Aggregate agg) {
    List<NamedExpression> out = new ArrayList<>();
    boolean changed = false;
    for (NamedExpression n : LLMPlans.list(agg.aggregateExpressions())) {
      NamedExpression r = (NamedExpression) listCalls((Expression) n);
      changed |= r != n;
      out.add(r);
    }
    if (!changed) {
      return agg;
    }
    return new Aggregate(agg.groupingExpressions(), LLMPlans.seq(out), agg.child(), agg.hint());
  }

  private Expression listCalls(Expression e) {
    if (isAggregateCall(e)) {
      List<Expression> args = LLMPlans.list(((AggregateExpression) e).aggregateFunction().children());
      List<Expression> newArgs = new ArrayList<>(args);
      newArgs.set(1, new CollectList(args.get(1)).toAggregateExpression());
      scala.Option<Expression> call =
          session.sessionState().catalog().resolveBuiltinOrTempFunction(LIST_FUNCTION, LLMPlans.seq(newArgs));
      return call.isDefined() ? call.get() : e;
    }
    return LLMPlans.mapChildren(e, this::listCalls);
  }
}
