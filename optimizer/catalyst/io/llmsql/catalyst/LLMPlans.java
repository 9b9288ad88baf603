package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.sql.catalyst.expressions.Alias;
import org.apache.spark.sql.catalyst.expressions.And;
import org.apache.spark.sql.catalyst.expressions.Ascending$;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.PythonUDF;
import org.apache.spark.sql.catalyst.expressions.SortOrder;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.RepartitionByExpression;
import org.apache.spark.sql.catalyst.plans.logical.Sort;
import org.apache.spark.sql.internal.SQLConf;

import scala.jdk.javaapi.CollectionConverters;

/**
 * Shared helpers for the llm-sql Catalyst rules: finding the LLM Python UDFs in an expression,
 * splitting conjunctions, rewriting children bottom-up, and the {@code llm_sql.optimize} switch.
 */
final class LLMPlans {
  /** Session setting that turns every llm-sql rule off when "false". */
  static final String OPTIMIZE_KEY = "llm_sql.optimize";

  private LLMPlans() {}

  static boolean enabled() {
    String v = SQLConf.get().getConfString(OPTIMIZE_KEY, "true");
    return !"false".equalsIgnoreCase(v.trim());
  }

  /** A boolean session setting, true unless set to "false". */
  static boolean flag(String key) {
    String v = SQLConf.get().getConfString(key, "true");
    return !"false".equalsIgnoreCase(v.trim());
  }

  /** A Python UDF whose name starts with "llm" (llm, llm_filter, llm_classify, llm_score, ...). */
  static boolean isLLM(Expression e) {
    return e instanceof PythonUDF && ((PythonUDF) e).name().toLowerCase().startsWith("llm");
  }

  static <T> List<T> list(scala.collection.Seq<T> seq) {
    return new ArrayList<>(CollectionConverters.asJava(seq));
  }

  static <T> scala.collection.immutable.Seq<T> seq(List<T> list) {
    return CollectionConverters.asScala(list).toList();
  }

  /** Every LLM UDF in {@code e}, outermost first (nested LLM calls inside arguments included). */
  static void collectLLM(Expression e, List<PythonUDF> out) {
    if (isLLM(e)) {
      out.add((PythonUDF) e);
    }
    for (Expression c : list(e.children())) {
      collectLLM(c, out);
    }
  }

  /** {@code e} with {@code f} applied to each child; {@code e} itself when no child changed. */
  static Expression mapChildren(Expression e, java.util.function.UnaryOperator<Expression> f) {
    List<Expression> kids = list(e.children());
    List<Expression> newKids = new ArrayList<>(kids.size());
    boolean changed = false;
    for (Expression k : kids) {
      Expression nk = f.apply(k);
      changed |= nk != k;
      newKids.add(nk);
    }
    return changed ? e.withNewChildren(seq(newKids)) : e;
  }

  /** {@code e AS name}, with a fresh expression id. */
  static Alias alias(Expression e, String name) {
    return new Alias(e, name, org.apache.spark.sql.catalyst.expressions.NamedExpression$.MODULE$.newExprId(),
        LLMPlans.<String>seq(new ArrayList<>()), scala.Option.empty(), LLMPlans.<String>seq(new ArrayList<>()));
  }

  static boolean containsLLM(Expression e) {
    if (isLLM(e)) {
      return true;
    }
    for (Expression c : list(e.children())) {
      if (containsLLM(c)) {
        return true;
      }
    }
    return false;
  }

  /** Whether {@code e} refers to a column of an enclosing query (a correlated subquery). */
  static boolean hasOuterReference(Expression e) {
    if (e instanceof org.apache.spark.sql.catalyst.expressions.OuterReference) {
      return true;
    }
    for (Expression c : list(e.children())) {
      if (hasOuterReference(c)) {
        return true;
      }
    }
    return false;
  }

  /** An LLM argument the rules can group or sort on: deterministic, local, orderable, no LLM. */
  static boolean usableKey(Expression arg, LogicalPlan child) {
    return arg.deterministic() && !containsLLM(arg) && !hasOuterReference(arg)
        && org.apache.spark.sql.catalyst.expressions.RowOrdering.isOrderable(arg.dataType())
        && arg.references().subsetOf(child.outputSet());
  }

  /** Whether the plan has a LIMIT / OFFSET / TAIL anywhere (row-count-bounded queries). */
  static boolean containsLimit(LogicalPlan p) {
    String n = p.nodeName();
    if (n.equals("GlobalLimit") || n.equals("LocalLimit") || n.equals("Offset") || n.equals("Tail")
        || n.equals("GlobalLimitAndOffset")) {
      return true;
    }
    for (LogicalPlan c : list(p.children())) {
      if (containsLimit(c)) {
        return true;
      }
    }
    return false;
  }

  static boolean planContainsLLM(LogicalPlan p) {
    for (Expression e : list(p.expressions())) {
      if (containsLLM(e)) {
        return true;
      }
    }
    for (LogicalPlan c : list(p.children())) {
      if (planContainsLLM(c)) {
        return true;
      }
    }
    return false;
  }

  static void splitAnd(Expression e, List<Expression> out) {
    if (e instanceof And) {
      splitAnd(((And) e).left(), out);
      splitAnd(((And) e).right(), out);
    } else {
      out.add(e);
    }
  }

  static Expression andAll(List<Expression> conjuncts) {
    Expression acc = conjuncts.get(0);
    for (int i = 1; i < conjuncts.size(); i++) {
      acc = new And(acc, conjuncts.get(i));
    }
    return acc;
  }

  /**
   * {@code child} sorted within partitions on {@code keys} (ascending, nulls first), the order in which
   * prompts sharing prefixes come out adjacent; with {@code rangePartition} the rows are first
   * range-partitioned on the same keys, so that such prompts also share a partition.
   */
  static LogicalPlan sortedOn(List<? extends Expression> keys, LogicalPlan child, boolean rangePartition) {
    List<SortOrder> order = new ArrayList<>();
    for (Expression k : keys) {
      order.add(new SortOrder(k, Ascending$.MODULE$, Ascending$.MODULE$.defaultNullOrdering(),
          LLMPlans.<Expression>seq(new ArrayList<>())));
    }
    LogicalPlan input = rangePartition
        ? new RepartitionByExpression(seq(new ArrayList<Expression>(order)), child, scala.Option.empty(),
            scala.Option.empty())
        : child;
    return new Sort(seq(order), false, input, scala.Option.empty());
  }

  /** A bottom-up plan rewrite written without Scala partial functions. */
  interface PlanRewrite {
    LogicalPlan apply(LogicalPlan p);
  }

  static LogicalPlan transformUp(LogicalPlan p, PlanRewrite f) {
    List<LogicalPlan> kids = list(p.children());
    boolean changed = false;
    List<LogicalPlan> newKids = new ArrayList<>(kids.size());
    for (LogicalPlan k : kids) {
      LogicalPlan nk = transformUp(k, f);
      changed |= nk != k;
      newKids.add(nk);
    }
    LogicalPlan cur = changed ? p.withNewChildren(seq(newKids)) : p;
    return f.apply(cur);
  }
}
