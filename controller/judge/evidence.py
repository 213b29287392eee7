"""Evidence: what the judge knows about a release, gathered trace by trace.

An ``Evidence`` is a pure accumulator (no I/O, no clock). Traces and late scores are
added as the source delivers them; ``advance(now)`` makes visible what the judge may use
at ``now``: a score counts once its trace has aged ``analysis.scoreSettle`` and the score
has arrived; a trace's missing score counts against coverage once it is
``analysis.scoreTimeout`` old. Observations are kept as sufficient statistics per
(step, time block, arm), so each look costs a pass over blocks, not over traces, and
steps are never pooled: every comparison is within one block of one step.

The per-trace record that late scores need is forgotten once a trace is older than
twice ``scoreTimeout`` (plus ``scoreSettle``), so a release judged for days holds
memory for that window, not for its whole history; a score later than that is counted
as an orphan.

Cells close too. A cell can only change while a trace in it can still get a score: once
its block ended ``2 × scoreTimeout + scoreSettle`` before the evidence's time and no
trace record of the block is held any more, the block is closed and its cells are
dropped. The judge reads only the running sums each cell has already added to (the
stratified sums, the pooled within-cell squares, the per-step counts), never the cells
themselves, so dropping them leaves every judgement bit for bit the same; cells are
never merged (that would change the stratified weights). A trace that starts in a closed
block comes too late to be judged: it is counted in ``late_traces`` and not used, with
or without the dropping (``keep_closed_cells`` keeps closed cells, to show that). Error
counts per block are kept for the last ``ERROR_BLOCKS_KEPT`` blocks, more than the
circuit breaker reads.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.judge.model import ScoreValue, Trace
from controller.judge.proxy_minutes import (
    MINUTE,
    TRACE_LAG_SECONDS,
    MinuteDelta,
    MinuteTaken,
    minute_of,
    take,
)
from policies.domain import Arm
from policies.model import Direction, Metric, MetricSource, Policy, ScoreType

COST_FLOOR_USD = 1e-6  # zero-cost traces (cache hits) are counted as this on the log scale
WORST_KEPT = 5  # canary traces kept per metric as "regressed most"
ERROR_BLOCKS_KEPT = 10
"""Blocks of per-block error counts kept before the evidence's time (the circuit breaker
reads the last five)."""

Cell = tuple[int, int]  # (step, block)


def metric_value(metric: Metric, raw: object) -> float | None:
    """The number a metric compares for one observation, or None if ``raw`` is unusable.

    Scores keep their own units; booleans and categorical "bad" values become 0/1; cost
    is compared on the log scale (a ratio of geometric means) because it is heavy-tailed.
    """
    if metric.source is MetricSource.SCORE:
        if metric.score_type is ScoreType.BOOLEAN:
            return _boolean(raw)
        if metric.score_type is ScoreType.CATEGORICAL:
            if not isinstance(raw, str) or metric.bad_values is None:
                return None
            return 1.0 if raw in metric.bad_values else 0.0
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            return None
        low, high = (0.0, 1.0) if metric.range is None else (metric.range.min, metric.range.max)
        return float(raw) if low <= raw <= high else None
    if metric.source.is_error_rate:
        return _boolean(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    if raw < 0:
        return None
    if metric.source is MetricSource.COST:
        return math.log(float(raw) + COST_FLOOR_USD)
    return float(raw)


def _trace_value(trace: Trace, source: MetricSource) -> object:
    """What a trace itself says about a metric of ``source``; None when it says nothing
    (score metrics: scores arrive on their own)."""
    if source.is_error_rate:
        return trace.error
    if source is MetricSource.COST:
        return trace.cost_usd
    if source is MetricSource.LATENCY:
        return trace.latency_ms
    return None


def _boolean(raw: object) -> float | None:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float) and raw in (0, 1):
        return float(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return 1.0 if raw.strip().lower() == "true" else 0.0
    return None


def is_indicator(metric: Metric) -> bool:
    """True for metrics whose observations are 0/1 (rates)."""
    return metric.source.is_error_rate or (
        metric.score_type
        in (
            ScoreType.BOOLEAN,
            ScoreType.CATEGORICAL,
        )
        and metric.source is MetricSource.SCORE
    )


@dataclass(slots=True)
class ArmMoments:
    """Running count, sum and sum of squares for one arm in one cell."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, n: int, total: float, total_sq: float) -> None:
        self.n += n
        self.total += total
        self.total_sq += total_sq

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def within_ss(self) -> float:
        if self.n < 2:
            return 0.0
        return max(self.total_sq - self.total * self.total / self.n, 0.0)


@dataclass(slots=True)
class CellMoments:
    """Both arms of one (step, block) cell, and what the cell adds to the series sums."""

    baseline: ArmMoments = field(default_factory=ArmMoments)
    canary: ArmMoments = field(default_factory=ArmMoments)
    contribution: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def arm(self, arm: Arm) -> ArmMoments:
        return self.canary if arm is Arm.CANARY else self.baseline


def cell_contribution(cell: CellMoments) -> tuple[float, float, float, float]:
    """(w, w*d, a, b) of a cell, with w = n_c*n_b/(n_c+n_b) and d = mean_c - mean_b.

    The stratified estimate is sum(w*d)/sum(w); its variance is
    (var_c*sum(a) + var_b*sum(b)) / sum(w)^2 with a = w^2/n_c and b = w^2/n_b. The
    weights depend on counts only, so the sums can be kept up to date one observation
    at a time.
    """
    n_c, n_b = cell.canary.n, cell.baseline.n
    if n_c == 0 or n_b == 0:
        return (0.0, 0.0, 0.0, 0.0)
    w = n_c * n_b / (n_c + n_b)
    return (w, w * (cell.canary.mean - cell.baseline.mean), w * w / n_c, w * w / n_b)


@dataclass(slots=True)
class MeanSeries:
    """Observations of one mean-type metric: stratified sums kept current.

    ``arms[i]`` holds [n, sum, sum of squares, pooled within-cell sum of squares, pooled
    degrees of freedom] for baseline (0) and canary (1).
    """

    cells: dict[Cell, CellMoments] = field(default_factory=dict)
    step_counts: dict[int, list[int]] = field(default_factory=dict)  # step -> [baseline, canary]
    arms: tuple[list[float], list[float]] = field(default_factory=lambda: ([0.0] * 5, [0.0] * 5))
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # w, wd, a, b
    canary_bad: int = 0  # canary observations on the harmful side (for 0/1 metrics)

    def add(self, cell: Cell, arm: Arm, value: float) -> None:
        self.add_batch(cell, arm, 1, value, value * value)

    def add_batch(self, cell: Cell, arm: Arm, n: int, total: float, total_sq: float) -> None:
        """Add ``n`` observations with the given sum and sum of squares to a cell."""
        if n <= 0:
            return
        moments = self.cells.get(cell)
        if moments is None:
            moments = self.cells[cell] = CellMoments()
        side = moments.arm(arm)
        stats = self.arms[1 if arm is Arm.CANARY else 0]
        old_ss, old_df = side.within_ss, max(side.n - 1, 0)
        side.add(n, total, total_sq)
        stats[0] += n
        stats[1] += total
        stats[2] += total_sq
        stats[3] += side.within_ss - old_ss
        stats[4] += max(side.n - 1, 0) - old_df
        old = moments.contribution
        new = cell_contribution(moments)
        moments.contribution = new
        sums = self.sums
        for i in range(4):
            sums[i] += new[i] - old[i]
        counts = self.step_counts.get(cell[0])
        if counts is None:
            counts = self.step_counts[cell[0]] = [0, 0]
        counts[1 if arm is Arm.CANARY else 0] += n

    def step_count(self, step: int) -> tuple[int, int]:
        counts = self.step_counts.get(step, [0, 0])
        return counts[0], counts[1]

    @property
    def totals(self) -> tuple[int, int]:
        return int(self.arms[0][0]), int(self.arms[1][0])

    def drop_block(self, block: int, steps: int) -> None:
        """Forget the cells of a closed block (its share of the sums stays in them)."""
        cells = self.cells
        for step in range(steps):
            cells.pop((step, block), None)


LOG_BIN_BASE = math.log(1.01)  # quantile sketch: values within 1% share a bin


def sketch_bin(value: float) -> int:
    """Bin of a nonnegative value in a log-spaced sketch (relative accuracy 1%)."""
    if value <= 0.0:
        return -(10**9)
    return math.ceil(math.log(value) / LOG_BIN_BASE)


def bin_value(index: int) -> float:
    """A representative value of a sketch bin (its upper edge)."""
    if index <= -(10**9):
        return 0.0
    return math.exp(index * LOG_BIN_BASE)


@dataclass(slots=True)
class Sketch:
    """Counts of values per log-spaced bin: quantiles and exceedances to within 1%."""

    bins: dict[int, int] = field(default_factory=dict)
    n: int = 0

    def add(self, value: float) -> None:
        index = sketch_bin(value)
        self.bins[index] = self.bins.get(index, 0) + 1
        self.n += 1

    def quantile(self, q: float) -> float:
        """Smallest bin value with at least a share ``q`` of values at or below it."""
        if self.n == 0:
            return math.nan
        rank = max(math.ceil(q * self.n), 1)
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                return bin_value(index)
        return bin_value(max(self.bins))

    def count_above(self, threshold: float) -> int:
        """Values in bins strictly above the bin of ``threshold``."""
        edge = sketch_bin(threshold)
        return sum(count for index, count in self.bins.items() if index > edge)


@dataclass(slots=True)
class QuantileSeries:
    """Values of a quantile metric per step and arm, as sketches."""

    steps: dict[int, tuple[Sketch, Sketch]] = field(default_factory=dict)

    def add(self, step: int, arm: Arm, value: float) -> None:
        pair = self.steps.get(step)
        if pair is None:
            pair = self.steps[step] = (Sketch(), Sketch())
        pair[1 if arm is Arm.CANARY else 0].add(value)

    def step_count(self, step: int) -> tuple[int, int]:
        pair = self.steps.get(step)
        return (0, 0) if pair is None else (pair[0].n, pair[1].n)

    @property
    def totals(self) -> tuple[int, int]:
        return (
            sum(b.n for b, _ in self.steps.values()),
            sum(c.n for _, c in self.steps.values()),
        )


@dataclass(slots=True)
class MetricSeries:
    """All that is known about one metric."""

    metric: Metric
    indicator: bool
    means: MeanSeries | None
    quantiles: QuantileSeries | None
    coverage: MeanSeries | None  # score metrics: 1 = unscored after scoreTimeout
    worst: list[tuple[float, float, str]] = field(default_factory=list)  # min-heap
    invalid: int = 0


@dataclass(slots=True)
class _TraceInfo:
    arm: Arm
    ts: float
    cell: Cell
    error: bool
    scored: dict[str, float] | None = None  # score name -> arrived at (None: none yet)
    pending: int = 0  # entries of the pending heap that still refer to this trace
    expired: bool = False  # old enough to forget once ``pending`` is 0


# A pending observation: (due, sequence, metric, trace id, value or None for a coverage
# check). Plain tuples keep the heap's comparisons in C; the sequence breaks ties.
_Pending = tuple[float, int, str, str, float | None]


class Evidence:
    """Everything the judge may use about one release, built incrementally."""

    def __init__(
        self,
        policy: Policy,
        started_at: float,
        *,
        keep_closed_cells: bool = False,
        traffic_from_proxy: bool = False,
    ) -> None:
        self.policy = policy
        self.traffic_from_proxy = traffic_from_proxy
        """Traffic, errors and latency come from the proxies' counts
        (``add_proxy_minute``), not from traces (``controller.judge.proxy_minutes``)."""
        self.started_at = started_at
        self.block_seconds = policy.analysis.interval
        self.observed_until = started_at
        self._step_starts: list[float] = [started_at]
        self._traces: dict[str, _TraceInfo] = {}
        self._arrivals: deque[tuple[float, str]] = deque()  # (ts, trace id), to forget
        self.forgotten_traces = 0
        self.keep_closed_cells = keep_closed_cells
        self.closed_blocks = 0
        """Blocks before this one (counted from ``started_at``) are closed."""
        self._held: dict[int, int] = {}  # block -> trace records held
        self._last_cell: Cell = (0, 0)
        self.late_traces = 0
        self._pending: list[_Pending] = []
        self._seq = 0
        self.series: dict[str, MetricSeries] = {}
        self._by_score: dict[str, list[MetricSeries]] = {}
        for metric in policy.analysis.metrics:
            indicator = is_indicator(metric)
            quantile = metric.source is MetricSource.LATENCY
            is_score = metric.source is MetricSource.SCORE
            series = MetricSeries(
                metric=metric,
                indicator=indicator,
                means=None if quantile else MeanSeries(),
                quantiles=QuantileSeries() if quantile else None,
                coverage=MeanSeries() if is_score else None,
            )
            self.series[metric.name] = series
            if is_score and metric.score is not None:
                self._by_score.setdefault(metric.score, []).append(series)
        # trace_error_rate stays on the traces: the ERROR observations only they carry
        counted = (MetricSource.ERROR_RATE, MetricSource.LATENCY) if traffic_from_proxy else ()
        self._from_traces = [s for s in self.series.values() if s.metric.source not in counted]
        self._from_proxy = [s for s in self.series.values() if s.metric.source in counted]
        self.step_traffic: dict[int, list[int]] = {}  # step -> [baseline, canary] traces
        # block -> [canary traces, canary errors, baseline traces, baseline errors]
        self.block_errors: dict[int, list[int]] = {}
        self.shadow_traces = 0
        self.duplicate_traces = 0
        self.orphan_scores = 0  # scores for traces never seen
        # proxy counts: (0 baseline / 1 canary, minute) -> what was taken in of it
        self._minutes: dict[tuple[int, int], MinuteTaken] = {}
        self.late_requests = 0  # counted requests that came after their cell closed
        self._found: dict[int, list[int]] = {}  # minute -> [baseline, canary] traces read
        self.loss = MeanSeries()  # 1 = a counted request whose trace was not found
        self.loss_checked_until = math.ceil(started_at / MINUTE) * MINUTE
        """Minutes before this one have been compared for trace loss (the minute the
        rollout starts in is not counted at all: see ``add_proxy_minute``)."""
        self.late_found = 0  # traces read after their minute was compared for loss
        self.surplus_traces = 0  # traces found beyond the requests counted in their minute

    # -- steps and cells ---------------------------------------------------------------

    def open_step(self, index: int, at: float) -> None:
        """Traces that start at or after ``at`` belong to step ``index`` (0-based)."""
        if index != len(self._step_starts):
            raise ValueError(f"step {index} opened after {len(self._step_starts) - 1} steps")
        if at < self._step_starts[-1]:
            raise ValueError("steps must open in time order")
        self._step_starts.append(at)

    @property
    def step_count(self) -> int:
        return len(self._step_starts)

    def step_of(self, ts: float) -> int:
        return max(bisect.bisect_right(self._step_starts, ts) - 1, 0)

    def cell_of(self, ts: float) -> Cell:
        cell = (self.step_of(ts), math.floor((ts - self.started_at) / self.block_seconds))
        # traces come about in time order: the records of one block share one cell
        # object (a block number past 256 is an object of its own in every new tuple)
        last = self._last_cell
        if cell == last:
            return last
        self._last_cell = cell
        return cell

    # -- input -------------------------------------------------------------------------

    def add_trace(self, trace: Trace) -> bool:
        """Record a new trace; False (and counted) if its id was seen before."""
        if trace.arm is Arm.SHADOW:
            self.shadow_traces += 1
            return True
        if trace.trace_id in self._traces:
            self.duplicate_traces += 1
            return False
        cell = self.cell_of(trace.ts)
        if 0 <= cell[1] < self.closed_blocks:
            self.late_traces += 1
            return False
        error = trace.error is True
        info = _TraceInfo(arm=trace.arm, ts=trace.ts, cell=cell, error=error)
        self._traces[trace.trace_id] = info
        self._held[cell[1]] = self._held.get(cell[1], 0) + 1
        self._arrivals.append((trace.ts, trace.trace_id))
        if self.traffic_from_proxy:
            self._count_found(trace.ts, trace.arm)
        else:
            self._count_traffic(cell, trace.arm, error)
        self._observe_trace_metrics(trace)
        if not error:
            self._expect_scores(trace)
        if trace.scores:
            self.add_scores(trace.trace_id, trace.scores, trace.ts)
        return True

    def _count_traffic(self, cell: Cell, arm: Arm, error: bool) -> None:
        """One more trace of ``arm`` in its step and block, and its error."""
        step_traffic = self.step_traffic.setdefault(cell[0], [0, 0])
        block = self.block_errors.setdefault(cell[1], [0, 0, 0, 0])
        if arm is Arm.CANARY:
            step_traffic[1] += 1
            block[0] += 1
            block[1] += error
        else:
            step_traffic[0] += 1
            block[2] += 1
            block[3] += error

    def _count_found(self, ts: float, arm: Arm) -> None:
        """One more trace read of a minute, for the trace-loss check."""
        minute = minute_of(ts)
        if minute < self.loss_checked_until:
            self.late_found += 1
            return
        found = self._found.get(minute)
        if found is None:
            found = self._found[minute] = [0, 0]
        found[1 if arm is Arm.CANARY else 0] += 1

    def add_found(self, minute: int, baseline: int, canary: int) -> None:
        """Traces read of a minute by arm, counted at once (``add_trace`` counts each)."""
        if minute < self.loss_checked_until:
            self.late_found += baseline + canary
            return
        found = self._found.setdefault(minute, [0, 0])
        found[0] += baseline
        found[1] += canary

    def _observe_trace_metrics(self, trace: Trace) -> None:
        """The values of the metrics a trace carries itself: errors, cost, latency (the
        first and last from the proxies' counts instead, with ``traffic_from_proxy``)."""
        for series in self._from_traces:
            raw = _trace_value(trace, series.metric.source)
            if raw is not None:
                self._push(series, trace.trace_id, trace.ts, metric_value(series.metric, raw))

    def _expect_scores(self, trace: Trace) -> None:
        """Check every score metric's coverage of this trace once its scores are due."""
        due = trace.ts + self.policy.analysis.score_timeout
        for group in self._by_score.values():
            for series in group:
                self._schedule(due, series.metric.name, trace.trace_id, None)

    def add_scores(self, trace_id: str, scores: Mapping[str, ScoreValue], at: float) -> None:
        """Record scores that arrived at ``at`` for a trace added earlier."""
        info = self._traces.get(trace_id)
        if info is None:
            self.orphan_scores += len(scores)
            return
        settle = self.policy.analysis.score_settle
        for name, raw in scores.items():
            group = self._by_score.get(name)
            if not group:
                continue
            if info.scored is None:
                info.scored = {}
            elif name in info.scored:
                continue
            info.scored[name] = at
            for series in group:
                value = metric_value(series.metric, raw)
                if value is None:
                    series.invalid += 1
                    continue
                self._schedule(max(at, info.ts + settle), series.metric.name, trace_id, value)

    def _push(self, series: MetricSeries, trace_id: str, ts: float, value: float | None) -> None:
        if value is None:
            series.invalid += 1
            return
        self._schedule(ts, series.metric.name, trace_id, value)

    def _schedule(self, due: float, metric: str, trace_id: str, value: float | None) -> None:
        self._traces[trace_id].pending += 1
        self._seq += 1
        heapq.heappush(self._pending, (due, self._seq, metric, trace_id, value))

    # -- aggregates -------------------------------------------------------------------
    # The same evidence from pre-aggregated batches (a metrics API, a simulation):
    # visible at once, so call these in time order and ``advance`` after each batch.

    def add_traffic(
        self,
        cell: Cell,
        baseline: int,
        canary: int,
        canary_errors: int,
        baseline_errors: int = 0,
    ) -> None:
        """Count traces that started in a cell, and errors among them, by arm."""
        step_traffic = self.step_traffic.setdefault(cell[0], [0, 0])
        step_traffic[0] += baseline
        step_traffic[1] += canary
        block = self.block_errors.setdefault(cell[1], [0, 0, 0, 0])
        block[0] += canary
        block[1] += canary_errors
        block[2] += baseline
        block[3] += baseline_errors

    def add_batch(
        self,
        metric: str,
        cell: Cell,
        arm: Arm,
        moments: tuple[int, float, float],
        harmful: int = 0,
    ) -> None:
        """Add (count, sum, sum of squares) of a mean metric's values in a cell.

        ``harmful`` counts the canary's observations on the harmful side of a 0/1 metric.
        """
        series = self.series[metric]
        if series.means is None:
            raise ValueError(f"{metric} is a quantile metric: use add_quantile_bins")
        self._refuse_closed(cell)
        series.means.add_batch(cell, arm, *moments)
        if arm is Arm.CANARY:
            series.means.canary_bad += harmful

    def add_coverage(self, metric: str, cell: Cell, arm: Arm, traces: int, unscored: int) -> None:
        """Count traces past scoreTimeout in a cell, and how many of them were never scored."""
        coverage = self.series[metric].coverage
        if coverage is None:
            raise ValueError(f"{metric} is not a score metric")
        self._refuse_closed(cell)
        coverage.add_batch(cell, arm, traces, float(unscored), float(unscored))

    def _refuse_closed(self, cell: Cell) -> None:
        if 0 <= cell[1] < self.closed_blocks:
            raise ValueError(
                f"cell {cell} is closed: batches come in time order, each before its block "
                "is 2 x scoreTimeout + scoreSettle old"
            )

    def add_quantile_bins(self, metric: str, step: int, arm: Arm, bins: Mapping[int, int]) -> None:
        """Add counts per sketch bin (see ``sketch_bin``) of a quantile metric's values."""
        quantiles = self.series[metric].quantiles
        if quantiles is None:
            raise ValueError(f"{metric} is not a quantile metric")
        pair = quantiles.steps.get(step)
        if pair is None:
            pair = quantiles.steps[step] = (Sketch(), Sketch())
        sketch = pair[1 if arm is Arm.CANARY else 0]
        for index, count in bins.items():
            sketch.bins[index] = sketch.bins.get(index, 0) + count
            sketch.n += count

    # -- the proxies' counts -----------------------------------------------------------

    def add_proxy_minute(
        self,
        arm: Arm,
        minute: int,
        counts: tuple[int, int, int],
        bins: Mapping[int, int],
    ) -> None:
        """Take in the proxies' counts of one arm's minute (start of the UTC minute, in
        epoch seconds) as read now: ``counts`` is (requests, errors, sampled requests),
        summed over the proxies, and ``bins`` the latency bins; only what grew since the
        last reading of the minute is added."""
        if not self.traffic_from_proxy:
            raise ValueError("this evidence takes its traffic from traces")
        end = minute + MINUTE
        if arm is Arm.SHADOW or minute < self.started_at:
            return  # a minute begun before the rollout also counts what ran before it
        side = 1 if arm is Arm.CANARY else 0
        key = (side, minute)
        taken = self._minutes.get(key)
        if taken is None:
            taken = self._minutes[key] = MinuteTaken()
        requests, errors, sampled = counts
        delta = take(taken, requests, errors, sampled, bins)
        if delta.empty:
            return
        cell = self.cell_of(max(minute + MINUTE / 2, self.started_at))
        if 0 <= cell[1] < self.closed_blocks:
            self.late_requests += delta.requests
            return
        block = self.block_errors.setdefault(cell[1], [0, 0, 0, 0])
        block[2 - 2 * side] += delta.requests
        block[3 - 2 * side] += delta.errors
        if self._within_one_step(minute, end):
            # a minute a step starts in mixes two weights: the sample-ratio check would
            # see a mismatch that is not there
            self.step_traffic.setdefault(cell[0], [0, 0])[side] += delta.requests
        self._observe_counts(cell, arm, delta)

    def _observe_counts(self, cell: Cell, arm: Arm, delta: MinuteDelta) -> None:
        """Counted errors and latencies into the metrics that read them."""
        for series in self._from_proxy:
            if series.quantiles is not None:
                if delta.bins:
                    self.add_quantile_bins(series.metric.name, cell[0], arm, delta.bins)
                continue
            assert series.means is not None
            series.means.add_batch(cell, arm, delta.requests, delta.errors, delta.errors)
            if arm is Arm.CANARY:
                lower_is_better = series.metric.direction is Direction.LOWER
                series.means.canary_bad += (
                    delta.errors if lower_is_better else delta.requests - delta.errors
                )

    def _within_one_step(self, start: float, end: float) -> bool:
        if start < self.started_at:
            return False
        starts = self._step_starts
        return bisect.bisect_right(starts, start) == bisect.bisect_left(starts, end)

    def counts_from(self) -> int:
        """The first minute whose counts can still be taken in (its cell is open)."""
        first = math.ceil(self.started_at / MINUTE) * MINUTE
        if not self.closed_blocks:
            return first
        first_open = self.started_at + self.closed_blocks * self.block_seconds
        return max(math.ceil((first_open - MINUTE / 2) / MINUTE) * MINUTE, first)

    def _check_loss(self, until: float) -> None:
        """Compare traces found with requests counted, per arm, in the minutes that
        ended before ``until``."""
        minute = self.loss_checked_until
        while minute + MINUTE <= until:
            found = self._found.pop(minute, None) or [0, 0]
            baseline = self._minutes.get((0, minute))
            canary = self._minutes.get((1, minute))
            if baseline is not None and canary is not None and baseline.sampled and canary.sampled:
                cell = (
                    self.step_of(minute + MINUTE / 2),
                    (minute - minute_of(self.started_at)) // MINUTE,
                )
                for arm, taken, seen in (
                    (Arm.BASELINE, baseline, found[0]),
                    (Arm.CANARY, canary, found[1]),
                ):
                    lost = taken.sampled - seen
                    if lost < 0:
                        self.surplus_traces -= lost
                        lost = 0
                    self.loss.add_batch(cell, arm, taken.sampled, float(lost), float(lost))
                self.loss.cells.pop(cell, None)  # a minute is compared once
            minute += MINUTE
        self.loss_checked_until = minute

    def _forget_minutes(self) -> None:
        """Drop what was taken of minutes whose cell closed and whose loss is checked."""
        first_open = self.started_at + self.closed_blocks * self.block_seconds
        stale = [
            key
            for key in self._minutes
            if key[1] + MINUTE / 2 < first_open and key[1] < self.loss_checked_until
        ]
        for key in stale:
            del self._minutes[key]

    # -- time --------------------------------------------------------------------------

    def advance(
        self,
        now: float,
        scores_read_until: float | None = None,
        traces_read_until: float | None = None,
    ) -> None:
        """Make visible everything the judge may use at ``now``. Time only moves forward.

        ``scores_read_until``: the time up to which scores have been read completely
        (None: all of them, as in a replay). A trace is counted as unscored only once its
        scores were due before that time: scores that could not be read yet (Langfuse
        failing, a poll cut short) are not missing scores. ``traces_read_until``: the
        time up to which traces have been read completely (None: none are compared for
        loss yet); with ``traffic_from_proxy``, the minutes whose traces have all been
        read are compared with the proxies' counts (trace loss).
        """
        if now < self.observed_until:
            raise ValueError("evidence cannot go back in time")
        pending = self._pending
        unread: list[_Pending] = []
        while pending and pending[0][0] <= now:
            item = heapq.heappop(pending)
            due, _, metric, trace_id, value = item
            if value is None and scores_read_until is not None and due > scores_read_until:
                unread.append(item)
                continue
            info = self._traces[trace_id]
            info.pending -= 1
            if info.expired and not info.pending:
                self._drop_record(trace_id, info)
            series = self.series[metric]
            if value is None:
                assert series.coverage is not None
                scored = info.scored
                arrived = (
                    math.inf if scored is None else scored.get(series.metric.score or "", math.inf)
                )
                unscored = 0.0 if arrived <= due else 1.0
                series.coverage.add(info.cell, info.arm, unscored)
                continue
            self._observe(series, info, trace_id, value)
        for item in unread:
            heapq.heappush(pending, item)
        self.observed_until = now
        analysis = self.policy.analysis
        horizon = now - 2 * analysis.score_timeout - analysis.score_settle
        self._forget(horizon)
        self._close(horizon)
        self._forget_error_blocks(now)
        if self.traffic_from_proxy:
            if traces_read_until is not None:
                lag = self.policy.routing.read_timeout + TRACE_LAG_SECONDS
                self._check_loss(min(traces_read_until, now) - lag)
            if not self.keep_closed_cells:
                self._forget_minutes()

    def _forget(self, horizon: float) -> None:
        """Drop the records of traces too old for any score to count."""
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] < horizon:
            _, trace_id = arrivals.popleft()
            info = self._traces.get(trace_id)
            if info is None:
                continue
            if info.pending:
                info.expired = True  # a score due later still needs it
            else:
                self._drop_record(trace_id, info)

    def _drop_record(self, trace_id: str, info: _TraceInfo) -> None:
        del self._traces[trace_id]
        self.forgotten_traces += 1
        block = info.cell[1]
        left = self._held[block] - 1
        if left:
            self._held[block] = left
        else:
            del self._held[block]

    def _close(self, horizon: float) -> None:
        """Close the blocks that ended before ``horizon`` and hold no trace record: no
        observation can reach their cells any more."""
        block = self.closed_blocks
        start, length, held = self.started_at, self.block_seconds, self._held
        while start + (block + 1) * length <= horizon and not held.get(block):
            if not self.keep_closed_cells:
                steps = len(self._step_starts)
                for series in self.series.values():
                    for means in (series.means, series.coverage):
                        if means is not None:
                            means.drop_block(block, steps)
            block += 1
        self.closed_blocks = block

    def _forget_error_blocks(self, now: float) -> None:
        """Drop error counts of blocks too old for the circuit breaker."""
        if self.keep_closed_cells:
            return
        oldest = math.floor((now - self.started_at) / self.block_seconds) - ERROR_BLOCKS_KEPT
        stale = [block for block in self.block_errors if block < oldest]
        for block in stale:
            del self.block_errors[block]

    def _observe(self, series: MetricSeries, info: _TraceInfo, trace_id: str, value: float) -> None:
        if series.quantiles is not None:
            series.quantiles.add(info.cell[0], info.arm, value)
        else:
            assert series.means is not None
            series.means.add(info.cell, info.arm, value)
        if info.arm is not Arm.CANARY:
            return
        lower_is_better = series.metric.direction is Direction.LOWER
        badness = value if lower_is_better else -value
        if series.indicator:
            harmful = value >= 0.5 if lower_is_better else value < 0.5
            if not harmful:
                return
            if series.means is not None:
                series.means.canary_bad += 1
            badness = info.ts  # among failures, the most recent
        entry = (badness, info.ts, trace_id)
        if len(series.worst) < WORST_KEPT:
            heapq.heappush(series.worst, entry)
        elif entry > series.worst[0]:
            heapq.heapreplace(series.worst, entry)

    # -- read side ---------------------------------------------------------------------

    def traffic_in_step(self, step: int) -> tuple[int, int]:
        """(baseline, canary) traces that started in ``step``."""
        counts = self.step_traffic.get(step, [0, 0])
        return counts[0], counts[1]

    def recent_errors(self, since: float, until: float) -> tuple[int, int, int, int]:
        """(canary traces, canary errors, baseline traces, baseline errors) in the blocks
        between ``since`` and ``until``."""
        first = math.floor((since - self.started_at) / self.block_seconds)
        last = math.floor((until - self.started_at) / self.block_seconds)
        totals = [0, 0, 0, 0]
        for block in range(first, last + 1):
            counts = self.block_errors.get(block)
            if counts is not None:
                for i in range(4):
                    totals[i] += counts[i]
        return totals[0], totals[1], totals[2], totals[3]

    def holds(self, trace_id: str) -> bool:
        """Whether the record of a trace is held (a score for it still counts)."""
        return trace_id in self._traces

    def canary_trace_ids(self) -> list[str]:
        """The canary's traces whose records are held (the recent ones)."""
        canary = Arm.CANARY
        return [trace_id for trace_id, info in self._traces.items() if info.arm is canary]

    def worst_traces(self, name: str) -> tuple[str, ...]:
        series = self.series[name]
        return tuple(trace_id for _, _, trace_id in sorted(series.worst, reverse=True))
