package io.llmsql.catalyst;

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
 */
public class LLMSQLExtensions extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> {

  @Override
  public BoxedUnit apply(SparkSessionExtensions ext) {
    ext.injectPreCBORule(new AbstractFunction1<SparkSession, Rule<LogicalPlan>>() {
      @Override
      public Rule<LogicalPlan> apply(SparkSession s) {
        return new ChooseFieldOrder(s);
      }
    });
    ext.injectPreCBORule(new AbstractFunction1<SparkSession, Rule<LogicalPlan>>() {
      @Override
      public Rule<LogicalPlan> apply(SparkSession s) {
        return new CheapPredicatesFirst(s);
      }
    });
    ext.injectPreCBORule(new AbstractFunction1<SparkSession, Rule<LogicalPlan>>() {
      @Override
      public Rule<LogicalPlan> apply(SparkSession s) {
        return new PullLLMOutOfAggregates(s);
      }
    });
    ext.injectPreCBORule(new AbstractFunction1<SparkSession, Rule<LogicalPlan>>() {
      @Override
      public Rule<LogicalPlan> apply(SparkSession s) {
        return new DeduplicateLLMCalls(s);
      }
    });
    ext.injectPreCBORule(new AbstractFunction1<SparkSession, Rule<LogicalPlan>>() {
      @Override
      public Rule<LogicalPlan> apply(SparkSession s) {
        return new OrderRowsForPrefixes(s);
      }
    });
    return BoxedUnit.UNIT;
  }
}
