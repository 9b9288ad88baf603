package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.expressions.Alias;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.Literal;
import org.apache.spark.sql.catalyst.expressions.NamedExpression;
import org.apache.spark.sql.catalyst.expressions.PythonUDF;
import org.apache.spark.sql.catalyst.plans.logical.Aggregate;
import org.apache.spark.sql.catalyst.plans.logical.Filter;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.OneRowRelation;
import org.apache.spark.sql.catalyst.plans.logical.Project;
import org.apache.spark.sql.catalyst.plans.logical.RepartitionByExpression;
import org.apache.spark.sql.catalyst.plans.logical.Sort;

/**
 * The LLM stages of an optimised plan, for {@code llm_sql.explain} in Spark: every LLM call, where the rules
 * put it, and plans that compute what it will read, so the driver can count and estimate a stage without
 * calling the LLM.
 *
 * <p>For a call in a {@code Project}, a {@code Filter} or the {@code ArrowEvalPython} node Spark moves it into,
 * whose child calls no LLM, {@link Stage#inputs()} is
 * {@code Project[arg0, arg1, ...]} over that child: one row per UDF invocation, with the UDF's own argument
 * values (instruction, field struct, labels, options) in its argument order. When the child is the
 * distinct-tuple {@code Aggregate} that {@link DeduplicateLLMCalls} added (under its sort and range
 * repartitioning), those rows are already distinct, and {@link Stage#rowsIn()} is the aggregate's child: the
 * rows the plain plan would have called the LLM on. A call that reads another LLM call's output, or sits in
 * another kind of node (an aggregate, a join condition), has no input plans: counting its inputs would run
 * the LLM.
 */
public final class LLMStages {
  private LLMStages() {}

  /** One LLM call of the plan. */
  public static final class Stage {
    private final PythonUDF call;
    private final String node;
    private final LogicalPlan inputs;
    private final LogicalPlan rowsIn;
    private final boolean deduplicated;

    /**
     * One row of the call's arguments with every non-constant one NULL (of its type): the instruction, the
     * field names (a struct's type), the labels and options, which name the call, for any stage.
     */
    public LogicalPlan signature() {
      return arguments(call, true, new OneRowRelation());
    }

    Stage(PythonUDF call, String node, LogicalPlan inputs, LogicalPlan rowsIn, boolean deduplicated) {
      this.call = call;
      this.node = node;
      this.inputs = inputs;
      this.rowsIn = rowsIn;
      this.deduplicated = deduplicated;
    }

    /** The UDF's name: llm, llm_filter, llm_classify, ... */
    public String function() {
      return call.name();
    }

    /** The call as SQL text. */
    public String sql() {
      return call.sql();
    }

    /** The plan node holding the call (ArrowEvalPython, Project, Filter, Aggregate, ...). */
    public String node() {
      return node;
    }

    /** The rows the UDF is invoked on, one column per argument; null when not countable without the LLM. */
    public LogicalPlan inputs() {
      return inputs;
    }

    /** The rows before the rules' deduplication (the same plan as {@link #inputs()} when not deduplicated). */
    public LogicalPlan rowsIn() {
      return rowsIn;
    }

    /** Whether the rules run this call once per distinct input tuple. */
    public boolean deduplicated() {
      return deduplicated;
    }
  }

  /** Every LLM call of {@code plan}, in pre-order (a parent's calls before its children's). */
  public static List<Stage> find(LogicalPlan plan) {
    List<Stage> out = new ArrayList<>();
    walk(plan, out);
    return out;
  }

  /** Whether the plan is row-bounded (LIMIT / OFFSET / TAIL): Spark stops calling the LLM once it has its rows. */
  public static boolean bounded(LogicalPlan plan) {
    return LLMPlans.containsLimit(plan);
  }

  /** A DataFrame over {@code plan} in {@code session} (a classic, not a Connect, session). */
  public static Dataset<Row> dataFrame(SparkSession session, LogicalPlan plan) {
    return org.apache.spark.sql.classic.Dataset.ofRows((org.apache.spark.sql.classic.SparkSession) session, plan);
  }

  private static void walk(LogicalPlan p, List<Stage> out) {
    List<PythonUDF> calls = new ArrayList<>();
    for (Expression e : LLMPlans.list(p.expressions())) {
      LLMPlans.collectLLM(e, calls);
    }
    for (PythonUDF u : calls) {
      out.add(stage(p, u));
    }
    for (LogicalPlan c : LLMPlans.list(p.children())) {
      walk(c, out);
    }
  }

  /** Nodes that evaluate a scalar UDF over their child's rows (after "Extract Python UDFs", the Arrow ones). */
  private static boolean scalarNode(LogicalPlan p) {
    String n = p.nodeName();
    return p instanceof Project || p instanceof Filter || n.equals("ArrowEvalPython") || n.equals("BatchEvalPython");
  }

  private static Stage stage(LogicalPlan p, PythonUDF u) {
    boolean scalarNode = scalarNode(p);
    LogicalPlan child = p.children().isEmpty() ? null : p.children().head();
    boolean readsLLM = child == null || LLMPlans.planContainsLLM(child);
    for (Expression arg : LLMPlans.list(u.children())) {
      readsLLM |= LLMPlans.containsLLM(arg);
    }
    if (!scalarNode || readsLLM) {
      return new Stage(u, p.nodeName(), null, null, false);
    }
    LogicalPlan inputs = arguments(u, false, child);
    // DeduplicateLLMCalls marks the call it moves above the distinct tuples non-deterministic
    Aggregate distinct = u.udfDeterministic() ? null : distinctTuples(child);
    return distinct == null
        ? new Stage(u, p.nodeName(), inputs, inputs, false)
        : new Stage(u, p.nodeName(), inputs, distinct.child(), true);
  }

  /** The call's arguments as columns arg0, arg1, ... over {@code child}; {@code fieldsNull}: the non-constant ones
   * NULL (of their type). */
  private static LogicalPlan arguments(PythonUDF u, boolean fieldsNull, LogicalPlan child) {
    List<NamedExpression> args = new ArrayList<>();
    int i = 0;
    for (Expression arg : LLMPlans.list(u.children())) {
      Expression value = fieldsNull && !arg.foldable() ? Literal.create(null, arg.dataType()) : arg;
      args.add(LLMPlans.alias(value, "arg" + i++));
    }
    return new Project(LLMPlans.seq(args), child);
  }

  /**
   * The distinct-tuple aggregate {@link DeduplicateLLMCalls} puts under the moved call (below its sort and range
   * repartitioning): every output an alias of a grouping expression; null when {@code p} is not one.
   */
  private static Aggregate distinctTuples(LogicalPlan p) {
    while (p instanceof Sort || p instanceof RepartitionByExpression) {
      p = p.children().head();
    }
    if (!(p instanceof Aggregate)) {
      return null;
    }
    Aggregate a = (Aggregate) p;
    List<Expression> groups = LLMPlans.list(a.groupingExpressions());
    List<NamedExpression> outs = LLMPlans.list(a.aggregateExpressions());
    if (groups.size() != outs.size()) {
      return null;
    }
    for (int i = 0; i < outs.size(); i++) {
      NamedExpression o = outs.get(i);
      if (!(o instanceof Alias) || !((Alias) o).child().semanticEquals(groups.get(i))) {
        return null;
      }
    }
    return a;
  }
}
