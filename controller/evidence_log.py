"""A judgement as the decision log keeps it: plain JSON, every figure the decision used."""

from __future__ import annotations

from typing import Any

from controller.judge import Judgement


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
