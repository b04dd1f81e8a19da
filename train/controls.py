"""Controls of an ablation: does the measurement see an effect that is there, and not see one that is not?

A grid names two of its strategy rows (TOML ``[controls]``):

* ``positive``: a selector that must beat random on this pool for a reason known in advance (the demo's
  planted pool: k-center on real text features against a pool of duplicated and rare families). The
  control is *found* when, for at least one LLM, its difference to random at the same budget has a 95%
  interval above 0 and p < 0.05. A positive control that is not found means the grid cannot see an effect
  of that size: its other verdicts of "no difference" say nothing.
* ``negative``: a row that has no reason to differ from random (random itself with another subset seed).
  It must *not* be flagged for any LLM; a flagged negative control means the measurement turns the noise of
  drawing a subset into verdicts, and its other "significant" lines are suspect.

Both are compared with the ``random`` row at the same budget, LLM and compute: the comparisons the report
already makes (:mod:`train.comparisons`); this module only picks them out and words the verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datasets_spec.errors import UserError
from train.paired_stats import Comparison, format_p

RANDOM = "random"


@dataclass(frozen=True)
class ControlsSpec:
    """Which strategy rows of the grid are its positive and negative controls (labels under [strategies])."""

    positive: str | None = None
    """Label of a row that must beat random (found: 95% CI above 0 and p < 0.05 for at least one LLM)."""
    negative: str | None = None
    """Label of a row that must not differ from random (flagged: p < 0.05 for any LLM)."""

    def __post_init__(self) -> None:
        for role, label in (("positive", self.positive), ("negative", self.negative)):
            if label == RANDOM:
                raise UserError(f"[controls] {role}: the {RANDOM!r} row is what controls are compared with")
        if self.positive is not None and self.positive == self.negative:
            raise UserError("[controls]: positive and negative name the same row")

    def labels(self) -> list[tuple[str, str]]:
        """(role, label) of the controls the grid names."""
        return [(role, label) for role, label in (("positive", self.positive), ("negative", self.negative))
                if label is not None]

    def check(self, strategy_labels: Sequence[str], where: str) -> None:
        """Every named control is a strategy row, and the grid has a random row to compare it with."""
        for role, label in self.labels():
            if label not in strategy_labels:
                raise UserError(
                    f"{where} [controls] {role}: {label!r} is not a row under [strategies] "
                    f"(rows: {', '.join(strategy_labels)})"
                )
            if RANDOM not in strategy_labels:
                raise UserError(
                    f"{where} [controls]: a control needs a [strategies.{RANDOM}] row to compare with"
                )


def control_lines(controls: ControlsSpec, comparisons: Sequence[tuple[dict, str, object]]) -> list[str]:
    """One ``positive control:`` / ``negative control:`` line per named control, each listing its
    comparisons with random (Δ, CI, p) and ending in a plain verdict."""
    lines = []
    for role, label in controls.labels():
        found = [
            (key, result) for key, ref, result in comparisons if ref == RANDOM and key["strategy"] == label
        ]
        lines.append(_line(role, label, found))
    return lines


def _p_parts(result: Comparison) -> str:
    """`` (questions p1, runs p2)`` when the comparison had a run-level test, else nothing."""
    if result.p_runs is None:
        return ""
    return f" (questions {format_p(result.p_questions)}, runs {format_p(result.p_runs)})"


def _line(role: str, label: str, found: list[tuple[dict, object]]) -> str:
    if not found:
        return (f"{role} control: {label} was not compared with random (no evaluated cells at a shared "
                "budget): the control did not run")
    parts = [
        f"{key['llm']} k={key['k']}: {result.diff:+.1f} points "
        f"[{result.ci_low:+.1f}, {result.ci_high:+.1f}], p = {format_p(result.p_value)}{_p_parts(result)}"
        for key, result in found
    ]
    if role == "positive":
        hits = [key["llm"] for key, result in found if result.significant and result.ci_low > 0]
        verdict = (f"found for {', '.join(hits)}" if hits else
                   "NOT found: this grid cannot see an effect of this size, so its 'no difference' verdicts "
                   "say nothing")
    else:
        flagged = [key["llm"] for key, result in found if result.significant]
        verdict = (f"FLAGGED for {', '.join(flagged)}: the measurement turns subset-draw noise into verdicts"
                   if flagged else "not flagged, as it must not be")
    return f"{role} control: {label} vs random; {'; '.join(parts)}: {verdict}."
