"""A context evaluation as a person reads it: a markdown table per budget (stdout) and an HTML report with the
evidence recall vs budget plot."""

from __future__ import annotations

import html

from crossrank.evaluate.context import ContextEvalResult
from crossrank.evaluate.report import STYLE, figure_png, fmt, html_table, markdown_table

SIGNIFICANCE = 0.05


def rows(result: ContextEvalResult) -> tuple[list[str], list[list[str]]]:
    """One row per budget: each system's recall, precision and tokens, and the Holm-corrected tests."""
    systems = list(result.budgets[0].means) if result.budgets else []
    header = ["budget", *(f"{s} {m}" for s in systems for m in ("recall", "precision", "tokens")),
              *(f"{name} Δrecall (p Holm)" for name in (result.budgets[0].tests if result.budgets else {}))]
    body = []
    for budget in result.budgets:
        cells = [str(budget.budget)]
        for system in systems:
            means = budget.means[system]
            cells += [fmt(means["recall"]), fmt(means["precision"]), f"{means['tokens']:.0f}"]
        for test in budget.tests.values():
            mark = "†" if test.randomisation_p_holm < SIGNIFICANCE and test.t_p_holm < SIGNIFICANCE else ""
            cells.append(f"{test.delta:+.4f} ({test.randomisation_p_holm:.4f}){mark}")
        body.append(cells)
    return header, body


def summary_lines(result: ContextEvalResult) -> list[str]:
    lines = [(f"{result.dataset}:{result.split}, {result.queries} queries with relevant documents, first stage "
             f"{result.first_stage}, depth {result.config.depth}; selector {result.selector}")]
    if result.answered is not None:
        lines.append(f"abstention: {result.answered:.3f} of answerable queries got context; "
                     f"{result.abstained if result.abstained is not None else float('nan'):.3f} of "
                     f"{result.no_answer_queries} no-answer queries (relevant candidates removed) abstained")
    if result.ms_per_query:
        lines.append("median ms per selection at the largest budget: " +
                     ", ".join(f"{name} {ms:.0f}" for name, ms in result.ms_per_query.items()))
    return lines + [f"note: {note}" for note in result.notes]


def markdown_summary(result: ContextEvalResult) -> str:
    return "\n".join([markdown_table(*rows(result)), "", *summary_lines(result),
                      "† both Holm-corrected paired tests (t and randomisation) p < 0.05"])


def recall_plot(result: ContextEvalResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    budgets = [b.budget for b in result.budgets]
    for system in result.budgets[0].means:
        axis.plot(budgets, [b.means[system]["recall"] for b in result.budgets], "o-", label=system)
    axis.set_xscale("log", base=2)
    axis.set_xticks(budgets, [str(b) for b in budgets])
    axis.set_xlabel("token budget")
    axis.set_ylabel("evidence recall")
    axis.set_title(f"{result.dataset} {result.split}: evidence recall vs budget")
    axis.legend(fontsize=8)
    return figure_png(figure)


def render_html(result: ContextEvalResult) -> str:
    title = f"crossrank eval-context: {result.dataset} ({result.split})"
    parts = [(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"),
             *(f"<p>{html.escape(line)}</p>" for line in summary_lines(result)),
             (f"<figure><img alt='evidence recall vs budget' src='data:image/png;base64,{recall_plot(result)}'>"
             "<figcaption>evidence recall vs budget</figcaption></figure>"),
             html_table(*rows(result)),
             "<p class='note'>† both Holm-corrected paired tests p &lt; 0.05 (over every budget and baseline).</p>",
             "</body></html>"]
    return "".join(parts)
