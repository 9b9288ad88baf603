package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.expressions.Attribute;
import org.apache.spark.sql.catalyst.expressions.EqualNullSafe;
import org.apache.spark.sql.catalyst.expressions.EqualTo;
import org.apache.spark.sql.catalyst.expressions.ExprId;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.Literal;
import org.apache.spark.sql.catalyst.plans.logical.Filter;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;

/**
 * Drop the copies of an LLM predicate that Catalyst infers from the user's own.
 *
 * <p>Catalyst takes a Python UDF for a deterministic function, so from {@code style = 'IPA' AND
 * llm_filter('..', struct(review, style))} its {@code InferFiltersFromConstraints} derives {@code llm_filter('..',
 * struct(review, 'IPA'))} and adds it to the filter: every row would ask the model twice with the same prompt (plain
 * Spark does, with the rules off). Two LLM conjuncts of one filter that are equal once every attribute the filter
 * or its child pins to a constant ({@code a = literal}) is replaced by that constant give the same answer on every
 * row that passes the other conjuncts, and the filter is false on the rows that do not: one of them is enough. The
 * one kept is the one with the most attribute references, the user's.
 */
public class DropInferredLLMPredicates extends LLMRule {
  public DropInferredLLMPredicates(SparkSession session) {}

  @Override
  LogicalPlan rewrite(LogicalPlan p) {
    if (!(p instanceof Filter)) {
      return p;
    }
    Filter f = (Filter) p;
    List<Expression> conjuncts = new ArrayList<>();
    LLMPlans.splitAnd(f.condition(), conjuncts);
    Map<ExprId, Literal> pinned = new HashMap<>();
    for (Expression c : conjuncts) {
      pin(c, pinned);
    }
    for (Expression c : LLMPlans.list(f.child().constraints().toSeq())) {
      pin(c, pinned);
    }
    List<Expression> kept = new ArrayList<>();
    List<Expression> keptForms = new ArrayList<>(); // the substituted form of each kept conjunct (null: no LLM)
    for (Expression c : conjuncts) {
      if (!LLMPlans.containsLLM(c) || !c.deterministic()) {
        kept.add(c);
        keptForms.add(null);
        continue;
      }
      Expression form = substitute(c, pinned);
      int same = -1;
      for (int i = 0; i < kept.size(); i++) {
        if (keptForms.get(i) != null && keptForms.get(i).semanticEquals(form)) {
          same = i;
          break;
        }
      }
      if (same < 0) {
        kept.add(c);
        keptForms.add(form);
      } else if (c.references().size() > kept.get(same).references().size()) {
        kept.set(same, c);
      }
    }
    if (kept.size() == conjuncts.size()) {
      return p;
    }
    return new Filter(LLMPlans.andAll(kept), f.child());
  }

  /** Record {@code a = literal} (either way round, or null-safe with a non-null literal). */
  private static void pin(Expression c, Map<ExprId, Literal> pinned) {
    Expression l;
    Expression r;
    if (c instanceof EqualTo) {
      l = ((EqualTo) c).left();
      r = ((EqualTo) c).right();
    } else if (c instanceof EqualNullSafe) {
      l = ((EqualNullSafe) c).left();
      r = ((EqualNullSafe) c).right();
    } else {
      return;
    }
    if (r instanceof Attribute && l instanceof Literal) {
      Expression t = l;
      l = r;
      r = t;
    }
    if (l instanceof Attribute && r instanceof Literal && ((Literal) r).value() != null
        && l.dataType().sameType(r.dataType())) {
      pinned.putIfAbsent(((Attribute) l).exprId(), (Literal) r);
    }
  }

  private static Expression substitute(Expression e, Map<ExprId, Literal> pinned) {
    if (e instanceof Attribute) {
      Literal lit = pinned.get(((Attribute) e).exprId());
      return lit == null ? e : lit;
    }
    return LLMPlans.mapChildren(e, x -> substitute(x, pinned));
  }
}
