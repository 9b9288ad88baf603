package io.llmsql.catalyst;

import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.rules.Rule;

/**
 * A rule that rewrites plan nodes bottom-up ({@link #rewrite}, one node at a time) when {@link #applies} to the
 * plan: by default when the llm-sql switch is on and the plan calls the LLM, so a plan without an LLM call comes
 * back as the same object.
 */
abstract class LLMRule extends Rule<LogicalPlan> {
  @Override
  public String ruleName() {
    return getClass().getName();
  }

  @Override
  public LogicalPlan apply(LogicalPlan plan) {
    return applies(plan) ? LLMPlans.transformUp(plan, this::rewrite) : plan;
  }

  boolean applies(LogicalPlan plan) {
    return LLMPlans.enabled() && LLMPlans.planContainsLLM(plan);
  }

  /** One node, its children already rewritten; the node itself when there is nothing to do. */
  abstract LogicalPlan rewrite(LogicalPlan p);
}
