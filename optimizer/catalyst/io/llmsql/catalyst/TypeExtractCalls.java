package io.llmsql.catalyst;

import java.util.List;

import org.apache.spark.sql.AnalysisException;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.Alias;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.JsonToStructs;
import org.apache.spark.sql.catalyst.expressions.JsonToStructs$;
import org.apache.spark.sql.catalyst.expressions.PythonUDF;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.internal.SQLConf;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

import scala.runtime.AbstractFunction1;

/**
 * Give {@code llm_extract} the type its schema names: an analyzer (resolution) rule, on whatever
 * {@code llm_sql.optimize} says, since it defines the function's type rather than optimising.
 *
 * <pre>
 *   llm_extract('Extract', review, named_struct('schema', 'brewery STRING, abv DOUBLE'))
 *     ==>  from_json(llm_extract_json('Extract', review, named_struct(...)),
 *                    STRUCT&lt;brewery: STRING, abv: DOUBLE&gt;)
 * </pre>
 *
 * A Python UDF's return type is fixed when Python registers it, and a schema is only known in the
 * query, so the UDF ({@code udf/spark_udf.py}) answers with the JSON text of the value it validated
 * against the schema (NULL, with the reason recorded, where the model could not produce one) and
 * {@code from_json} makes it the STRUCT ({@link ExtractSchema} reads the schema as Python does). The
 * wrapped UDF is renamed {@code llm_extract_json}: the other rules still see an LLM call (its name
 * starts with "llm"), and this rule, which only wraps {@code llm_extract}, never wraps it twice. The
 * options must be constants (the schema decides the query's types); a missing or malformed schema
 * fails the analysis, naming what is wrong.
 */
public class TypeExtractCalls extends LLMRule {
  static final String FUNCTION = "llm_extract";
  static final String TYPED = "llm_extract_json";

  public TypeExtractCalls(SparkSession session) {}

  @Override
  boolean applies(LogicalPlan plan) {
    return hasUntyped(plan); // whatever llm_sql.optimize says: it gives the function its type
  }

  @Override
  LogicalPlan rewrite(LogicalPlan p) {
    return p.mapExpressions(new AbstractFunction1<Expression, Expression>() {
      @Override
      public Expression apply(Expression e) {
        return typed(e);
      }
    });
  }

  private static boolean isUntyped(Expression e) {
    return e instanceof PythonUDF && ((PythonUDF) e).name().equalsIgnoreCase(FUNCTION);
  }

  private static boolean hasUntyped(LogicalPlan p) {
    for (Expression e : LLMPlans.list(p.expressions())) {
      if (e.find(new AbstractFunction1<Expression, Object>() {
        @Override
        public Object apply(Expression x) {
          return isUntyped(x);
        }
      }).isDefined()) {
        return true;
      }
    }
    for (LogicalPlan c : LLMPlans.list(p.children())) {
      if (hasUntyped(c)) {
        return true;
      }
    }
    return false;
  }

  /** {@code e} with every llm_extract call (nested ones first) wrapped in from_json of its schema. */
  private static Expression typed(Expression e) {
    Expression cur = LLMPlans.mapChildren(e, TypeExtractCalls::typed);
    if (!isUntyped(cur)) {
      return cur;
    }
    PythonUDF u = (PythonUDF) cur;
    StructType type;
    try {
      type = ExtractSchema.parse(schemaOf(u));
    } catch (IllegalArgumentException ex) {
      throw error(ex.getMessage());
    }
    PythonUDF json = u.copy(TYPED, u.func(), u.dataType(), u.children(), u.evalType(), u.udfDeterministic(),
        u.resultId());
    return new JsonToStructs(type, scala.collection.immutable.Map$.MODULE$.<String, String>empty(), json,
        scala.Option.apply(SQLConf.get().sessionLocalTimeZone()), JsonToStructs$.MODULE$.apply$default$5());
  }

  /**
   * The schema option's text: the trailing STRUCT argument is the options when there is a field argument
   * before it (udf/arrow_calls.py's split_args), and it must be a constant.
   */
  private static String schemaOf(PythonUDF u) {
    List<Expression> args = LLMPlans.list(u.children());
    if (args.size() < 3 || !(args.get(args.size() - 1).dataType() instanceof StructType)) {
      return null;
    }
    Expression last = withoutAliases(args.get(args.size() - 1));
    if (!last.foldable()) {
      throw error("llm_extract's options must be constants, e.g. named_struct('schema', 'brewery STRING')");
    }
    StructType opts = (StructType) last.dataType();
    scala.Option<Object> idx = opts.getFieldIndex("schema");
    if (idx.isEmpty()) {
      return null;
    }
    int i = (Integer) idx.get();
    if (!opts.fields()[i].dataType().equals(DataTypes.StringType)) {
      throw error("llm_extract's option schema must be a string: " + ExtractSchema.EXAMPLE);
    }
    InternalRow row = (InternalRow) last.eval(null);
    return row == null || row.isNullAt(i) ? null : row.getUTF8String(i).toString();
  }

  /**
   * {@code e} without its Alias nodes: the DataFrame API's {@code struct(lit(v).alias(k))} is a constant, but
   * the analyzer only removes the aliases inside it at the end of analysis.
   */
  private static Expression withoutAliases(Expression e) {
    if (e instanceof Alias) {
      return withoutAliases(((Alias) e).child());
    }
    return LLMPlans.mapChildren(e, TypeExtractCalls::withoutAliases);
  }

  /** An AnalysisException (what a query that does not analyse raises), thrown unchecked as Scala code does. */
  private static RuntimeException error(String message) {
    AnalysisException e = new AnalysisException(message, scala.Option.empty(), scala.Option.empty(),
        scala.Option.empty(), scala.Option.empty(), scala.collection.immutable.Map$.MODULE$.<String, String>empty(),
        new org.apache.spark.QueryContext[0]);
    return TypeExtractCalls.<RuntimeException>unchecked(e);
  }

  @SuppressWarnings("unchecked")
  private static <E extends Throwable> RuntimeException unchecked(Throwable t) throws E {
    throw (E) t;
  }
}
