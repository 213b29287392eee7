"""A sample source's health as the admin API and the dashboard show it: JSON with
camelCase names, times in seconds since the epoch, and only what concerns releases whose
rollout is running."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from controller.source.health import DOCS, RATE_LIMIT_WINDOW, ReadHealth, SourceHealth
from controller.source.score_types import ScoreTypeMismatch

__all__ = ["mismatch_json", "mismatches_of", "reads_json"]


def reads_json(reads: ReadHealth) -> dict[str, Any]:
    """The read health: its verdict, its sentence and the figures behind them."""
    return {
        "verdict": reads.verdict.value,
        "message": reads.message,
        "lastPollAt": reads.last_poll_at,
        "lastCompletePollAt": reads.last_complete_poll_at,
        "lagSeconds": _finite(reads.lag_seconds),
        "requestsLastMinute": reads.requests_last_minute,
        "budgetPerMinute": reads.budget_per_minute,
        "requestsNeededPerMinute": _finite(reads.requests_needed_per_minute),
        "tracesPerMinute": _finite(reads.traces_per_minute),
        "pollIntervalSeconds": _finite(reads.poll_interval_seconds),
        "rateLimitedTotal": reads.rate_limited_total,
        "rateLimitedRecent": reads.rate_limited_recent,
        "rateLimitedWindowSeconds": RATE_LIMIT_WINDOW,
        "lastError": reads.last_error,
        "docs": DOCS,
    }


def mismatch_json(mismatch: ScoreTypeMismatch) -> dict[str, Any]:
    """One score type mismatch, with its sentence."""
    return {
        "release": mismatch.release,
        "metric": mismatch.metric,
        "score": mismatch.score,
        "seen": mismatch.seen,
        "expected": mismatch.expected,
        "example": mismatch.example,
        "firstSeenAt": mismatch.first_seen,
        "lastSeenAt": mismatch.last_seen,
        "scores": mismatch.scores,
        "message": mismatch.describe(),
    }


def mismatches_of(
    health: SourceHealth | None, running: Iterable[tuple[str, float | None]]
) -> list[dict[str, Any]]:
    """The mismatches of running rollouts, given as (release, rollout start): those
    seen since the rollout started."""
    if health is None:
        return []
    since = dict(running)
    return [
        mismatch_json(mismatch)
        for mismatch in health.score_type_mismatches
        if mismatch.release in since
        and mismatch.last_seen >= (since[mismatch.release] or -math.inf)
    ]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
