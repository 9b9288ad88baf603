package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.expressions.Alias;
import org.apache.spark.sql.catalyst.expressions.Attribute;
import org.apache.spark.sql.catalyst.expressions.EqualNullSafe;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.NamedExpression;
import org.apache.spark.sql.catalyst.expressions.PythonUDF;
import org.apache.spark.sql.catalyst.plans.Inner$;
import org.apache.spark.sql.catalyst.plans.logical.Aggregate;
import org.apache.spark.sql.catalyst.plans.logical.Filter;
import org.apache.spark.sql.catalyst.plans.logical.Join;
import org.apache.spark.sql.catalyst.plans.logical.JoinHint;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.Project;

/**
 * Deduplicate LLM calls: each LLM UDF of a {@code Project} / {@code Filter} runs once per distinct
 * input tuple, and the results are joined back by null-safe equality on the inputs.
 *
 * <pre>
 *   Project [id, llm('x', review) AS s]          Project [id, _llm_out_0 AS s]
 *   +- child                              ==>    +- Join Inner, (review <=> review')
 *                                                   :- child
 *                                                   +- Project [review', llm('x', review') AS _llm_out_0]
 *                                                      +- Sort [review'], false        (prefix order)
 *                                                         +- RepartitionByExpression [review' ASC]  (range)
 *                                                            +- Aggregate [review], [review AS review']
 *                                                               +- child
 * </pre>
 *
 * The keys are the non-constant arguments of every LLM call of the node (in argument order); the
 * inner join matches each row with exactly one distinct tuple, so no row is lost or duplicated. The
 * moved UDF is marked non-deterministic, like {@link OrderRowsForPrefixes} does, which pins it above
 * its sort and makes the rule idempotent. Nodes whose LLM calls have nested LLM calls,
 * non-deterministic or unorderable arguments are left to {@link OrderRowsForPrefixes}.
 * A node whose child already holds an LLM call (an LLM projection over an LLM filter) is not joined
 * back, which would plan the child, and run its LLM calls, twice: its rows are range-partitioned and
 * sorted on the keys instead, so that the UDF's batch dedup finds the duplicates ({@link #colocate}).
 * {@code llm_sql.dedup=false} turns this rule off alone; plans with a LIMIT/OFFSET are not
 * deduplicated (the plain plan stops calling the LLM early); {@code llm_sql.range_partition=false}
 * drops the range repartitioning of the distinct tuples.
 */
public class DeduplicateLLMCalls extends LLMRule {
  static final String DEDUP_KEY = "llm_sql.dedup";
  static final String RANGE_KEY = "llm_sql.range_partition";

  public DeduplicateLLMCalls(SparkSession session) {}

  @Override
  boolean applies(LogicalPlan plan) {
    // Under a LIMIT the plain plan stops calling the LLM early; the distinct-tuple stage would not.
    return super.applies(plan) && LLMPlans.flag(DEDUP_KEY) && !plan.isStreaming() && !LLMPlans.containsLimit(plan);
  }

  @Override
  LogicalPlan rewrite(LogicalPlan p) {
    List<Expression> exprs = new ArrayList<>();
    if (p instanceof Filter) {
      exprs.add(((Filter) p).condition());
    } else if (p instanceof Project) {
      for (NamedExpression n : LLMPlans.list(((Project) p).projectList())) {
        exprs.add((Expression) n);
      }
    } else {
      return p;
    }
    List<PythonUDF> udfs = new ArrayList<>();
    for (Expression e : exprs) {
      LLMPlans.collectLLM(e, udfs);
    }
    if (udfs.isEmpty()) {
      return p;
    }
    LogicalPlan child = p.children().head();
    List<Expression> keys = new ArrayList<>();
    for (PythonUDF u : udfs) {
      if (!u.udfDeterministic()) {
        return p; // already rewritten by one of our rules
      }
      for (Expression arg : LLMPlans.list(u.children())) {
        if (arg.foldable()) {
          continue;
        }
        if (!LLMPlans.usableKey(arg, child)) {
          return p;
        }
        if (indexOf(keys, arg) < 0) {
          keys.add(arg);
        }
      }
    }
    if (keys.isEmpty()) {
      return p;
    }
    if (LLMPlans.planContainsLLM(child)) {
      return colocate(p, keys, child);
    }

    // Distinct input tuples, in prefix order, with the LLM evaluated once per tuple.
    List<NamedExpression> keyAliases = new ArrayList<>();
    List<Attribute> keyAttrs = new ArrayList<>();
    for (int i = 0; i < keys.size(); i++) {
      Expression k = keys.get(i);
      String name = k instanceof NamedExpression ? ((NamedExpression) k).name() : "_llm_key_" + i;
      Alias a = LLMPlans.alias(k, name);
      keyAliases.add(a);
      keyAttrs.add(a.toAttribute());
    }
    LogicalPlan distinct = new Aggregate(LLMPlans.seq(keys), LLMPlans.seq(keyAliases), child,
        scala.Option.empty());
    LogicalPlan sorted = LLMPlans.sortedOn(keyAttrs, distinct, LLMPlans.flag(RANGE_KEY));

    List<NamedExpression> rightList = new ArrayList<>(keyAttrs);
    Map<PythonUDF, Attribute> results = new IdentityHashMap<>();
    int j = 0;
    for (PythonUDF u : udfs) {
      List<Expression> args = new ArrayList<>();
      for (Expression arg : LLMPlans.list(u.children())) {
        args.add(arg.foldable() ? arg : keyAttrs.get(indexOf(keys, arg)));
      }
      PythonUDF moved = u.copy(u.name(), u.func(), u.dataType(), LLMPlans.seq(args), u.evalType(),
          false, u.resultId());
      Alias out = LLMPlans.alias(moved, "_llm_out_" + j++);
      rightList.add(out);
      results.put(u, out.toAttribute());
    }
    LogicalPlan right = new Project(LLMPlans.seq(rightList), sorted);

    List<Expression> conds = new ArrayList<>();
    for (int i = 0; i < keys.size(); i++) {
      conds.add(new EqualNullSafe(keys.get(i), keyAttrs.get(i)));
    }
    LogicalPlan join = new Join(child, right, Inner$.MODULE$,
        scala.Option.apply(LLMPlans.andAll(conds)), JoinHint.NONE());

    if (p instanceof Filter) {
      Expression cond = replace(((Filter) p).condition(), results);
      List<NamedExpression> childOut = new ArrayList<>();
      for (Attribute a : LLMPlans.list(child.output())) {
        childOut.add(a);
      }
      return new Project(LLMPlans.seq(childOut), new Filter(cond, join));
    }
    List<NamedExpression> projectList = new ArrayList<>();
    for (Expression e : exprs) {
      projectList.add((NamedExpression) replace(e, results));
    }
    return new Project(LLMPlans.seq(projectList), join);
  }

  /**
   * The join-back would plan {@code child} twice and run its LLM calls twice (an LLM projection over an
   * LLM filter). Instead, equal input tuples are brought together: range-partitioned and sorted on the
   * keys above the child, so they reach the UDF adjacent, in the same Arrow batch, where its batch dedup
   * answers them with one call (a tuple split by a batch boundary costs one extra call).
   */
  private static LogicalPlan colocate(LogicalPlan p, List<Expression> keys, LogicalPlan child) {
    LogicalPlan sorted = LLMPlans.sortedOn(keys, child, LLMPlans.flag(RANGE_KEY));
    if (p instanceof Filter) {
      return new Filter(OrderRowsForPrefixes.pin(((Filter) p).condition()), sorted);
    }
    List<NamedExpression> projectList = new ArrayList<>();
    for (NamedExpression n : LLMPlans.list(((Project) p).projectList())) {
      projectList.add((NamedExpression) OrderRowsForPrefixes.pin((Expression) n));
    }
    return new Project(LLMPlans.seq(projectList), sorted);
  }

  private static int indexOf(List<Expression> keys, Expression e) {
    for (int i = 0; i < keys.size(); i++) {
      if (keys.get(i).semanticEquals(e)) {
        return i;
      }
    }
    return -1;
  }

  private static Expression replace(Expression e, Map<PythonUDF, Attribute> results) {
    if (e instanceof PythonUDF && results.containsKey(e)) {
      return results.get(e);
    }
    return LLMPlans.mapChildren(e, x -> replace(x, results));
  }
}
