package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.NamedExpression;
import org.apache.spark.sql.catalyst.expressions.PythonUDF;
import org.apache.spark.sql.catalyst.plans.logical.Filter;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.Project;

/**
 * Order rows so that prompts sharing prefixes are adjacent inside each partition.
 *
 * <p>Below a {@code Project} or {@code Filter} that evaluates an LLM UDF, insert
 * {@code Sort(keys, global = false)} where the keys are the UDF's non-constant, orderable arguments
 * in argument order (the order the fields appear in the prompt), deduplicated across every LLM call
 * of that node. No shuffle is added: the sort is within partitions.
 *
 * <p>The rewritten LLM UDFs are re-marked non-deterministic ({@code udfDeterministic = false}). That
 * pins the evaluation above the inserted sort (Catalyst does not push non-deterministic filters
 * through a Sort, nor merge them into other filters), and it is this rule's idempotence mark: a node
 * is only rewritten while it holds a deterministic LLM UDF. Results are unchanged: the UDF is the
 * same function over the same rows.
 */
public class OrderRowsForPrefixes extends LLMRule {
  public OrderRowsForPrefixes(SparkSession session) {}

  @Override
  boolean applies(LogicalPlan plan) {
    // Streaming plans are left alone (a sort is not supported on a non-aggregated stream), and so
    // are plans with a LIMIT: the LLM runs on a few rows there, and a sort would change which.
    return super.applies(plan) && !plan.isStreaming() && !LLMPlans.containsLimit(plan);
  }

  @Override
  LogicalPlan rewrite(LogicalPlan p) {
    List<Expression> exprs;
    if (p instanceof Filter) {
      exprs = List.of(((Filter) p).condition());
    } else if (p instanceof Project) {
      List<NamedExpression> named = LLMPlans.list(((Project) p).projectList());
      exprs = new ArrayList<>();
      for (NamedExpression n : named) {
        exprs.add((Expression) n); // NamedExpression is a trait over Expression subclasses
      }
    } else {
      return p;
    }
    List<PythonUDF> udfs = new ArrayList<>();
    for (Expression e : exprs) {
      LLMPlans.collectLLM(e, udfs);
    }
    boolean pending = false;
    for (PythonUDF u : udfs) {
      pending |= u.udfDeterministic();
    }
    if (!pending) {
      return p; // no LLM call, or already rewritten
    }
    LogicalPlan child = p.children().head();
    Set<Expression> keys = new LinkedHashSet<>();
    for (PythonUDF u : udfs) {
      for (Expression arg : LLMPlans.list(u.children())) {
        if (arg.foldable() || !LLMPlans.usableKey(arg, child)) {
          continue;
        }
        keys.add(arg);
      }
    }
    if (keys.isEmpty()) {
      return p;
    }
    LogicalPlan sorted = LLMPlans.sortedOn(new ArrayList<>(keys), child, false);
    if (p instanceof Filter) {
      return new Filter(pin(((Filter) p).condition()), sorted);
    }
    List<NamedExpression> projectList = new ArrayList<>();
    for (Expression e : exprs) {
      projectList.add((NamedExpression) pin(e));
    }
    return new Project(LLMPlans.seq(projectList), sorted);
  }

  /** Marks every LLM UDF in {@code e} non-deterministic (see class comment). */
  static Expression pin(Expression e) {
    Expression cur = LLMPlans.mapChildren(e, OrderRowsForPrefixes::pin);
    if (LLMPlans.isLLM(cur) && ((PythonUDF) cur).udfDeterministic()) {
      PythonUDF u = (PythonUDF) cur;
      return u.copy(u.name(), u.func(), u.dataType(), u.children(), u.evalType(), false,
          u.resultId());
    }
    return cur;
  }
}
