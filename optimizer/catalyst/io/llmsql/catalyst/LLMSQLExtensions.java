package io.llmsql.catalyst;

import java.util.List;
import java.util.function.Function;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.rules.Rule;

import scala.runtime.AbstractFunction1;
import scala.runtime.BoxedUnit;

/**
 * Entry point named by {@code spark.sql.extensions=io.llmsql.catalyst.LLMSQLExtensions}.
 *
 * <p>The rules are injected as pre-CBO optimizer rules: that batch runs once, after Catalyst's
 * operator optimisations (predicate push-down, column pruning) have settled and before the
 * "Extract Python UDFs" batch turns LLM calls into ArrowEvalPython nodes, so the inserted sort and
 * split filters are neither undone by push-down nor re-added in a fixed-point loop. Every rule is a
 * no-op when {@code llm_sql.optimize=false} or when the plan holds no LLM Python UDF.
 *
 * <p>{@link TypeExtractCalls} is an analyzer (resolution) rule instead, on whatever the switch says: it
 * gives {@code llm_extract} the STRUCT type of its schema, which later resolution (a {@code .field}
 * of the value) needs. {@link ResolveLLMAggregates}, also in the analyzer, turns the aggregate {@code llm_agg}
 * into {@code llm_agg_list} over {@code collect_list} (off with {@code llm_sql.optimize=false}).
 */
public class LLMSQLExtensions extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> {

  /** The rules, in the order they run within the pre-CBO batch. */
  private static final List<Function<SparkSession, Rule<LogicalPlan>>> RULES = List.of(
      DropInferredLLMPredicates::new,
      LiftLLMJoinConditions::new,
      ChooseFieldOrder::new,
      CheapPredicatesFirst::new,
      PullLLMOutOfAggregates::new,
      DeduplicateLLMCalls::new,
      OrderRowsForPrefixes::new);

  @Override
  public BoxedUnit apply(SparkSessionExtensions ext) {
    for (Function<SparkSession, Rule<LogicalPlan>> rule : RULES) {
      ext.injectPreCBORule(new AbstractFunction1<SparkSession, Rule<LogicalPlan>>() {
        @Override
        public Rule<LogicalPlan> apply(SparkSession s) {
          return rule.apply(s);
        }
      });
    }
    ext.injectResolutionRule(new AbstractFunction1<SparkSession, Rule<LogicalPlan>>() {
      @Override
      public Rule<LogicalPlan> apply(SparkSession s) {
        return new TypeExtractCalls(s);
      }
    });
    ext.injectResolutionRule(new AbstractFunction1<SparkSession, Rule<LogicalPlan>>() {
      @Override
      public Rule<LogicalPlan> apply(SparkSession s) {
        return new ResolveLLMAggregates(s);
      }
    });
    return BoxedUnit.UNIT;
  }
}
