"""A judgement as the decision log keeps it: plain JSON, every figure the decision used;
and the latest judgements of a release as the dashboard charts them: a compact ring."""

from __future__ import annotations

import math
import threading
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Any

from controller.judge import Decision, Judgement, MetricResult, Scale, Verdict


def judgement_summary(judgement: Judgement) -> dict[str, Any]:
    """The evidence of one decision: per metric its verdict, estimate, bounds, counts,
    e-value against its threshold and worst canary traces; every guard's state."""
    return {
        "at": judgement.at,
        "step": judgement.step,
        "decision": judgement.decision.value,
        "reason": judgement.reason,
        "metrics": [
            {
                "name": metric.name,
                "source": metric.source,
                "verdict": metric.verdict.value,
                "critical": metric.critical,
                "reason": metric.reason,
                "scale": metric.scale.value,
                "estimate": metric.estimate,
                "lower": metric.lower,
                "upper": metric.upper,
                "nBaseline": metric.n_baseline,
                "nCanary": metric.n_canary,
                "nBaselineStep": metric.n_baseline_step,
                "nCanaryStep": metric.n_canary_step,
                "logEvalue": metric.log_evalue,
                "logThreshold": metric.log_threshold,
                "worstTraces": list(metric.worst_traces),
                "invalid": metric.invalid,
            }
            for metric in judgement.metrics
        ],
        "checks": [
            {
                "name": check.name,
                "state": check.state.value,
                "reason": check.reason,
                "logEvalue": check.log_evalue,
                "logThreshold": check.log_threshold,
            }
            for check in judgement.checks
        ],
    }


_VERDICTS = tuple(Verdict)
_FIGURES = 6  # estimate, lower, upper, log e-value, baseline and canary observations


@dataclass(frozen=True, slots=True)
class _Frame:
    """What stays the same from one judgement of a rollout to the next, per metric:
    (name, source, critical, scale, log threshold). Shared by the looks it fits."""

    metrics: tuple[tuple[str, str, bool, Scale, float], ...]


@dataclass(frozen=True, slots=True)
class _Look:
    """One judgement as the charts draw it: per metric its verdict and ``_FIGURES``
    numbers (NaN for none), packed."""

    at: float
    step: int
    decision: Decision
    frame: _Frame
    figures: array[float]
    verdicts: bytes


class JudgementRing:
    """The latest ``size`` judgements of one release, oldest first: the newest whole, the
    older ones as their verdicts, estimates, bounds, e-values and counts (about 60 bytes
    a metric; reasons, guards and worst traces are in the decision log for every judgement
    that decided something). Thread-safe: the admin API reads while the loop appends."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a ring holds at least one judgement, not {size}")
        self.size = size
        self._looks: deque[_Look] = deque(maxlen=size - 1)
        self._newest: Judgement | None = None
        self._frame: _Frame | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._looks) + (self._newest is not None)

    def append(self, judgement: Judgement) -> None:
        with self._lock:
            if self._newest is not None:
                self._looks.append(self._pack(self._newest))
            self._newest = judgement

    def judgements(self) -> tuple[Judgement, ...]:
        """Oldest first; all but the newest without reasons, guards and worst traces."""
        with self._lock:
            looks = list(self._looks)
            newest = self._newest
        older = tuple(_unpack(look) for look in looks)
        return older if newest is None else (*older, newest)

    def _pack(self, judgement: Judgement) -> _Look:
        metrics = judgement.metrics
        frame = _Frame(
            tuple((m.name, m.source, m.critical, m.scale, m.log_threshold) for m in metrics)
        )
        if frame != self._frame:
            self._frame = frame
        figures = array("d")
        for m in metrics:
            figures.extend(
                (
                    _float(m.estimate),
                    _float(m.lower),
                    _float(m.upper),
                    m.log_evalue,
                    float(m.n_baseline),
                    float(m.n_canary),
                )
            )
        assert self._frame is not None
        return _Look(
            at=judgement.at,
            step=judgement.step,
            decision=judgement.decision,
            frame=self._frame,
            figures=figures,
            verdicts=bytes(_VERDICTS.index(m.verdict) for m in metrics),
        )


def _float(value: float | None) -> float:
    return math.nan if value is None else value


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else value


def _unpack(look: _Look) -> Judgement:
    metrics = []
    for index, (name, source, critical, scale, log_threshold) in enumerate(look.frame.metrics):
        base = index * _FIGURES
        estimate, lower, upper, log_e, n_b, n_c = look.figures[base : base + _FIGURES]
        metrics.append(
            MetricResult(
                name=name,
                source=source,
                verdict=_VERDICTS[look.verdicts[index]],
                critical=critical,
                reason="",
                scale=scale,
                estimate=_optional(estimate),
                lower=_optional(lower),
                upper=_optional(upper),
                n_baseline=int(n_b),
                n_canary=int(n_c),
                n_baseline_step=0,
                n_canary_step=0,
                log_evalue=log_e,
                log_threshold=log_threshold,
            )
        )
    return Judgement(
        at=look.at,
        step=look.step,
        decision=look.decision,
        reason="",
        metrics=tuple(metrics),
        checks=(),
    )
