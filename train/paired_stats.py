"""Paired statistics of evaluated runs, question by question: which subset is better, by how much, how sure.

Two cells of an ablation answer the same questions, so they are compared pair by pair rather than by their
two accuracies:

* the accuracy difference, in points;
* a 95% paired-bootstrap confidence interval of that difference, resampling questions with replacement;
* an exact McNemar p-value: under "no difference", each question that one cell gets right and the other
  wrong (a discordant pair) is equally likely to go either way, so the smaller of the two discordant
  counts is Binomial(b + c, 1/2) and the two-sided p-value is computed from it exactly.

Seeds: a cell trained with several seeds is first averaged per question (its per-question accuracy is the
fraction of its seeds that got the question right), and questions stay the unit that is resampled and
tested. So seed noise is averaged out, never counted as extra independent questions. With several seeds the
McNemar test becomes the exact paired permutation (sign-flip) test on those per-question differences: each
question's difference is equally likely to have either sign under "no difference", and how large it is
counts, as it does in the bootstrap; with one seed per cell the two are the same test. A cell with a single
seed still gets the bootstrap interval: it measures question sampling, which is there whatever the seed count.

Replicates: seeds average out training noise but the tests above still hold the trained models fixed, so
two random draws of a subset, or two training seeds, can differ "significantly" on the questions alone. When
the cells are replicated (seeds, and with ``redraw_subsets`` one subset draw per seed), the comparison also
asks whether the difference stands out from the run-to-run spread, with a t-test on the runs' accuracies
(each run one observation): Welch's test on the pair (Satterthwaite's degrees of freedom), when both cells
have two runs or more. The reported p-value is then the larger of the question-level and the run-level
p-values, and the interval the hull of the two intervals: a difference is called significant only when
another set of questions and another set of runs would both keep it (an intersection-union test, valid at
the stated level).

Why not a variance pooled over the rows (:func:`pooled_run_variance`, a one-way analysis of variance's
within-cell mean square, which :func:`compare` still accepts for rows known to share one spread): the rows
of an ablation do not. A small random subset's accuracy varies with its draw, a large one's less, the whole
pool's not at all, and a near-deterministic selector's hardly. Pooled over the demo's five rows the spread
came out at 2.0 points where four draws of random 150 spread 4.6, and two random rows 7.2 points apart were
called different (p = 0.017): the negative control caught it. Welch's test on two runs a cell has one or two
degrees of freedom and needs a gap many times the runs' spread; that is the price of not assuming one.

The bootstrap draws, for each resample, how often each distinct per-question difference occurs (a
multinomial over those values): resampling n questions with replacement changes nothing else, so this is
the same distribution as drawing question indices, at a cost that does not grow with the number of
questions. The resampling seed is fixed, so a report is identical every time it is written.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from datasets_spec.errors import UserError
from datasets_spec.parts import read_json
from datasets_spec.safe_json import check_json_bytes, numbered_lines
from train.rundir import METRICS_FILE, PREDICTIONS_FILE

# 10,000 resamples put the Monte-Carlo error of a 95% percentile bound near 0.1 points on a few hundred
# questions, well below the interval widths the ablation sees; the bootstrap costs milliseconds per pair.
DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
SIGNIFICANCE = 0.05


# --- per-question answers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answers:
    """Per-question correctness of one cell: one row per seed (run), one column per question."""

    name: str
    """The cell (or run) these answers belong to, as reports and errors name it."""
    split: str | None
    """Evaluation split the questions come from (None when the run did not record it)."""
    question_ids: tuple[str, ...]
    """Question ids, sorted; every row of ``correct`` follows this order."""
    correct: np.ndarray
    """Boolean array (n_seeds, n_questions)."""
    runs: tuple[str, ...] = ()
    """Run names of the rows (one per seed)."""

    def __post_init__(self) -> None:
        if self.correct.ndim != 2 or self.correct.shape[1] != len(self.question_ids):
            raise ValueError(
                f"{self.name}: correct has shape {self.correct.shape}, "
                f"expected (seeds, {len(self.question_ids)})"
            )
        if self.correct.shape[0] == 0:
            raise ValueError(f"{self.name}: no seeds")

    @property
    def n_seeds(self) -> int:
        return int(self.correct.shape[0])

    @property
    def n_questions(self) -> int:
        return len(self.question_ids)

    def per_question(self) -> np.ndarray:
        """Fraction of seeds that answered each question right (float64, n_questions)."""
        return self.correct.mean(axis=0, dtype=np.float64)

    def accuracy(self) -> float:
        """Accuracy in percent, averaged over seeds."""
        return 100.0 * float(self.per_question().mean()) if self.n_questions else float("nan")


def load_run_answers(run_dir: Path) -> Answers:
    """One run's per-question correctness from its ``predictions.jsonl`` (LLaVA answer lines whose
    ``metadata.correct`` the evaluation wrote) and the split recorded in its ``metrics.json``."""
    run_dir = Path(run_dir)
    path = run_dir / PREDICTIONS_FILE
    if not path.exists():
        raise UserError(f"{path}: not found; evaluate the run first (train eval --run {run_dir})")
    ids, correct = _read_marks(path)
    split = None
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.exists():
        split = read_json(metrics_path).get("split")
    return Answers(
        name=run_dir.name, split=split, question_ids=ids, correct=correct.reshape(1, -1), runs=(run_dir.name,)
    )


def _read_marks(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted question ids, their correctness). Polars reads a well-formed file in milliseconds (a 4,241-line
    file is 0.05 s against 0.2 s for json.loads per line); anything it cannot read, or reads with a gap or a
    duplicate, goes through the line-by-line reader, which names the offending line. The bytes are
    scanned first (:mod:`datasets_spec.safe_json`): polars' reader crashes the process on deeply nested
    lines, and a file that is not UTF-8 is refused by name."""
    import polars as pl

    raw = _read_text_bytes(path)
    check_json_bytes(raw, path)
    try:
        frame = pl.read_ndjson(
            io.BytesIO(raw), schema={"question_id": pl.String, "metadata": pl.Struct({"correct": pl.Boolean})}
        )
        ids = frame["question_id"]
        correct = frame["metadata"].struct.field("correct")
        clean = ids.null_count() == 0 and correct.null_count() == 0 and ids.n_unique() == len(ids)
    except pl.exceptions.PolarsError:
        clean = False
    if clean:
        order = np.argsort(ids.to_numpy(), kind="stable")
        return tuple(ids.to_numpy()[order].tolist()), correct.to_numpy().astype(bool)[order]
    marks = _read_marks_slowly(path, raw.decode("utf-8"))
    ids = tuple(sorted(marks))
    return ids, np.array([marks[q] for q in ids], dtype=bool)


def _read_text_bytes(path: Path) -> bytes:
    """The file's bytes, refused by name unless they are UTF-8 text."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSON lines file") from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); expected JSON lines") from None
    return raw


def _read_marks_slowly(path: Path, text: str) -> dict[str, bool]:
    marks: dict[str, bool] = {}
    for lineno, line in numbered_lines(text):
        try:
            record = json.loads(line)
            qid, correct = str(record["question_id"]), record["metadata"]["correct"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f"{path}: line {lineno}: expected an answer with question_id and metadata.correct"
            ) from None
        if qid in marks:
            raise UserError(f"{path}: line {lineno}: duplicate question_id {qid!r}")
        if not isinstance(correct, bool):
            raise UserError(f"{path}: line {lineno}: metadata.correct is not true or false")
        marks[qid] = correct
    return marks


def check_same_questions(a: Answers, b: Answers) -> None:
    """Refuse to pair answers to different questions: one line naming both."""
    if a.split != b.split:
        raise UserError(
            f"cannot compare {a.name} with {b.name}: evaluated on different splits "
            f"({a.split!r}, {a.n_questions} questions vs {b.split!r}, {b.n_questions} questions)"
        )
    if a.question_ids != b.question_ids:
        only_a = len(set(a.question_ids) - set(b.question_ids))
        only_b = len(set(b.question_ids) - set(a.question_ids))
        raise UserError(
            f"cannot compare {a.name} with {b.name}: evaluated on different questions "
            f"({a.n_questions} vs {b.n_questions}; {only_a} only in the first, {only_b} only in the second)"
        )


def stack_seeds(name: str, runs: Sequence[Answers]) -> Answers:
    """One cell from its seeds' runs; the seeds must have answered the same questions."""
    if not runs:
        raise ValueError(f"{name}: no runs")
    for other in runs[1:]:
        check_same_questions(runs[0], other)
    return Answers(
        name=name,
        split=runs[0].split,
        question_ids=runs[0].question_ids,
        correct=np.concatenate([r.correct for r in runs], axis=0),
        runs=tuple(run for r in runs for run in r.runs),
    )


# --- the tests ----------------------------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (1.0 when there are none).

    ``2 * P(X <= min(b, c))`` for X ~ Binomial(b + c, 1/2), capped at 1, computed with exact integers.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    # Exact integers, each binomial coefficient from the previous one (C(n, i+1) = C(n, i) (n-i) / (i+1)):
    # 20x faster than math.comb per term at n ~ 1,500, and no float underflow of 2**-n.
    term = tail = 1
    for i in range(min(b, c)):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)


def sign_flip_exact(differences: np.ndarray) -> float:
    """Two-sided exact paired permutation (sign-flip) p-value of integer per-question differences.

    Under "no difference" each question's difference is as likely to be ``+d`` as ``-d``; the p-value is
    the probability that the sum of independently flipped differences is at least as far from 0 as the
    observed sum. Questions with the same magnitude ``m`` contribute ``m (2X - n_m)`` with X ~ Bin(n_m, 1/2),
    so the null distribution is the convolution of one binomial per magnitude (through an FFT: floating
    point, exact up to rounding near 1e-15). With differences of -1, 0, +1 (one seed per cell) it is
    McNemar's test.
    """
    differences = np.asarray(differences, dtype=np.int64)
    observed = int(differences.sum())
    magnitudes, counts = np.unique(np.abs(differences[differences != 0]), return_counts=True)
    if magnitudes.size == 0 or observed == 0:
        return 1.0
    width = int(2 * np.sum(magnitudes * counts)) + 1  # support of the sum: -total .. +total
    size = 1 << (width - 1).bit_length()
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    for magnitude, n in zip(magnitudes.tolist(), counts.tolist(), strict=True):
        pmf = np.zeros(2 * magnitude * n + 1)
        pmf[:: 2 * magnitude] = _binomial_half_pmf(n)  # index = m (2x) for x = 0..n, offset by m n
        spectrum *= np.fft.rfft(pmf, size)
    total = (width - 1) // 2
    null = np.clip(np.fft.irfft(spectrum, size)[:width], 0.0, None)
    values = np.arange(width) - total
    # 12 significant digits: the FFT's rounding (about 1e-15) must not move a p-value across a printed digit.
    return float(f"{min(1.0, null[np.abs(values) >= abs(observed)].sum()):.12g}")


def _binomial_half_pmf(n: int) -> np.ndarray:
    """P(X = x), x = 0..n, for X ~ Binomial(n, 1/2), in log space (no overflow at n in the thousands):
    log C(n, x) is the running sum of log((n - i) / (i + 1))."""
    steps = np.log(np.arange(n, 0, -1, dtype=np.float64) / np.arange(1, n + 1, dtype=np.float64))
    log_comb = np.concatenate([[0.0], np.cumsum(steps)])
    return np.exp(log_comb - n * np.log(2.0))


def paired_p_value(a: Answers, b: Answers) -> float:
    """Exact McNemar for one seed per cell; with several seeds, the exact sign-flip test on the per-question
    seed-mean differences (integers in units of 1 / (seeds_a x seeds_b)), which is McNemar's test extended
    to counts of right answers and uses how much each question differs, as the bootstrap does."""
    if a.n_seeds == 1 and b.n_seeds == 1:
        return mcnemar_exact(*discordant(a, b))
    units = a.correct.sum(axis=0) * b.n_seeds - b.correct.sum(axis=0) * a.n_seeds
    return sign_flip_exact(units)


def discordant(a: Answers, b: Answers) -> tuple[int, int]:
    """(questions where ``a`` is better, questions where ``b`` is better), on per-question seed means."""
    qa, qb = a.per_question(), b.per_question()
    return int(np.sum(qa > qb)), int(np.sum(qb > qa))


def bootstrap_mean_ci(
    values: np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per question).

    Each resample draws the counts of the distinct values from a multinomial: the same distribution as
    resampling the values themselves with replacement.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        return float("nan"), float("nan")
    distinct, counts = np.unique(values, return_counts=True)
    if distinct.size == 1:
        return float(distinct[0]), float(distinct[0])
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_resamples)
    means = draws @ distinct / n
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Comparison:
    """Cell ``a`` against cell ``b`` on the same questions; differences are ``a - b`` in points."""

    a: str
    b: str
    n_questions: int
    seeds_a: int
    seeds_b: int
    acc_a: float
    acc_b: float
    diff: float
    ci_low: float
    ci_high: float
    a_better: int
    """Questions ``a`` gets right more often than ``b`` (with one seed each: a right, b wrong)."""
    b_better: int
    p_value: float
    """The comparison's p-value: the question-level test's, or with replicated cells the larger of it and
    the run-level test's (see the module docstring)."""
    level: float = DEFAULT_LEVEL
    p_questions: float | None = None
    """The question-level test's p-value (exact McNemar / sign-flip), whatever the replicates."""
    p_runs: float | None = None
    """The run-level t-test's p-value (pooled run variance, or Welch's when both cells have at least two
    runs and none was pooled); None when neither applied."""

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE

    def verdict(self, a_label: str | None = None, b_label: str | None = None, where: str = "") -> str:
        """One line, e.g. ``l2-maxdiverse vs random, k=100, tiny-mistral: +7.0 points, 95% CI [+1.5, +12.5],
        p = 0.012``."""
        head = f"{a_label or self.a} vs {b_label or self.b}" + (f", {where}" if where else "")
        mark = " (significant at p < 0.05)" if self.significant else ""
        return (
            f"{head}: {self.diff:+.1f} points, {100 * self.level:.0f}% CI "
            f"[{self.ci_low:+.1f}, {self.ci_high:+.1f}], p = {format_p(self.p_value)}{mark}"
        )


def compare(
    a: Answers,
    b: Answers,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
    run_variance: tuple[float, int] | None = None,
) -> Comparison:
    """Accuracy difference of ``a`` over ``b``, its paired-bootstrap interval and exact McNemar p-value;
    with replicates, also the run-level test (``run_variance``: a pooled (variance in points², degrees of
    freedom) from :func:`pooled_run_variance`; None: Welch's test when both cells have two runs)."""
    check_same_questions(a, b)
    per_question = 100.0 * (a.per_question() - b.per_question())
    lo, hi = bootstrap_mean_ci(per_question, n_resamples=n_resamples, level=level, seed=seed)
    a_better, b_better = discordant(a, b)
    acc_a, acc_b = a.accuracy(), b.accuracy()
    p_questions = paired_p_value(a, b)
    p_value, p_runs = p_questions, None
    if run_variance is not None and run_variance[1] >= 1:
        p_runs, (run_lo, run_hi) = pooled_runs_test(a, b, *run_variance, level=level)
    elif a.n_seeds >= 2 and b.n_seeds >= 2:
        p_runs, (run_lo, run_hi) = welch_runs(a, b, level=level)
    if p_runs is not None:
        p_value, lo, hi = max(p_questions, p_runs), min(lo, run_lo), max(hi, run_hi)
    return Comparison(
        a=a.name,
        b=b.name,
        n_questions=a.n_questions,
        seeds_a=a.n_seeds,
        seeds_b=b.n_seeds,
        acc_a=acc_a,
        acc_b=acc_b,
        diff=_exact_difference(a, b),
        ci_low=lo,
        ci_high=hi,
        a_better=a_better,
        b_better=b_better,
        p_value=p_value,
        level=level,
        p_questions=p_questions,
        p_runs=p_runs,
    )


def run_accuracies(answers: Answers) -> np.ndarray:
    """Accuracy of each run (row) in percent."""
    return 100.0 * answers.correct.mean(axis=1, dtype=np.float64)


def pooled_run_variance(cells: Sequence[Answers]) -> tuple[float, int] | None:
    """Within-cell variance of run accuracies (points²) pooled over ``cells``, and its degrees of freedom
    (runs minus cells, counting only cells with two runs or more); None when no cell has two runs."""
    replicated = [run_accuracies(c) for c in cells if c.n_seeds >= 2]
    df = sum(x.size - 1 for x in replicated)
    if df == 0:
        return None
    return float(sum(((x - x.mean()) ** 2).sum() for x in replicated) / df), df


def pooled_runs_test(
    a: Answers, b: Answers, variance: float, df: int, *, level: float = DEFAULT_LEVEL
) -> tuple[float, tuple[float, float]]:
    """Student's t-test of the two cells' mean run accuracies with a pooled run variance on ``df`` degrees
    of freedom: (two-sided p, interval of the difference in points)."""
    diff = float(run_accuracies(a).mean() - run_accuracies(b).mean())
    se = float(np.sqrt(variance * (1.0 / a.n_seeds + 1.0 / b.n_seeds)))
    return _t_test(diff, se, df, level)


def welch_runs(a: Answers, b: Answers, *, level: float = DEFAULT_LEVEL) -> tuple[float, tuple[float, float]]:
    """Welch's t-test of ``a``'s run accuracies against ``b``'s: (two-sided p, interval of the difference in
    points). Needs at least two runs per cell. Runs that agree exactly (no spread at all) give p = 1 for
    equal means and 0 otherwise, with a zero-width interval."""
    x, y = run_accuracies(a), run_accuracies(b)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"{a.name} vs {b.name}: the run-level test needs two runs per cell")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(va + vb))
    # Satterthwaite's degrees of freedom (unused when se is 0: the runs agree exactly)
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1)) if se else 1.0
    return _t_test(float(x.mean() - y.mean()), se, df, level)


def _t_test(diff: float, se: float, df: float, level: float) -> tuple[float, tuple[float, float]]:
    """Two-sided p of ``diff / se`` under Student's t on ``df`` degrees of freedom, and the ``level``
    interval of ``diff``. No spread at all (se = 0): p = 1 for a zero difference, else 0, and a zero-width
    interval."""
    from scipy.special import stdtr, stdtrit

    if se == 0.0:
        return (1.0 if diff == 0.0 else 0.0), (diff, diff)
    half = float(stdtrit(df, 0.5 + level / 2)) * se
    return min(1.0, float(2.0 * stdtr(df, -abs(diff) / se))), (diff - half, diff + half)


def _exact_difference(a: Answers, b: Answers) -> float:
    """Accuracy of ``a`` minus ``b`` in points from the integer counts, so equal cells give exactly 0."""
    if not a.n_questions:
        return float("nan")
    right_a = Fraction(int(a.correct.sum()), a.n_seeds * a.n_questions)
    right_b = Fraction(int(b.correct.sum()), b.n_seeds * b.n_questions)
    return float(100 * (right_a - right_b))


def accuracy_ci(
    answers: Answers,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Bootstrap interval (percent) of one cell's accuracy over its questions, seeds averaged."""
    return bootstrap_mean_ci(100.0 * answers.per_question(), n_resamples=n_resamples, level=level, seed=seed)


def format_p(p: float) -> str:
    """p-values as reports print them: three significant digits, ``< 0.0001`` below that."""
    if p != p:
        return "-"
    if p < 1e-4:
        return "< 0.0001"
    return f"{p:.3g}" if p < 0.1 else f"{p:.2f}"
