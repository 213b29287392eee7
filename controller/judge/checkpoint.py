"""An ``Evidence`` as plain data and back, exactly: every running sum, cell, sketch and
held trace record, with its floats as they are (JSON keeps a float's every bit).

The controller stores a running release's checkpoint with the state file's samples so it
can forget the samples the checkpoint holds: after a restart the evidence is the
checkpoint plus the samples stored after it, not a replay of the release from its start.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections import deque
from typing import Any

from controller.judge.evidence import (
    ArmMoments,
    CellMoments,
    Evidence,
    MeanSeries,
    QuantileSeries,
    Sketch,
    _TraceInfo,
)
from controller.judge.proxy_minutes import MinuteTaken
from policies.domain import Arm
from policies.model import Policy

__all__ = ["FORMAT", "restore", "snapshot"]

FORMAT = 2
"""Bumped when the layout changes: a checkpoint of a format not in ``READABLE`` is not
restored. Format 2 stores the held trace records and the pending heap by column, packed
(format 1 wrote a JSON list a record: 11 MB and half a second of CPU a checkpoint at
10,000 requests a minute)."""
READABLE = frozenset({1, 2})

_ARMS = {arm.value: arm for arm in Arm}


def snapshot(evidence: Evidence) -> dict[str, Any]:
    """The evidence as JSON-ready data (``restore`` gives it back)."""
    return {
        "format": FORMAT,
        "metrics": sorted(evidence.series),
        "startedAt": evidence.started_at,
        "trafficFromProxy": evidence.traffic_from_proxy,
        "proxy": _proxy_out(evidence) if evidence.traffic_from_proxy else None,
        "observedUntil": evidence.observed_until,
        "stepStarts": list(evidence._step_starts),
        "traces": _traces_out(evidence),
        "pending": _pending_out(evidence),
        "seq": evidence._seq,
        "counters": {
            "forgotten": evidence.forgotten_traces,
            "late": evidence.late_traces,
            "shadow": evidence.shadow_traces,
            "duplicate": evidence.duplicate_traces,
            "orphan": evidence.orphan_scores,
        },
        "closedBlocks": evidence.closed_blocks,
        "stepTraffic": _int_keys_out(evidence.step_traffic),
        "blockErrors": _int_keys_out(evidence.block_errors),
        "series": {
            name: {
                "means": None if series.means is None else _means_out(series.means),
                "coverage": None if series.coverage is None else _means_out(series.coverage),
                "quantiles": (
                    None if series.quantiles is None else _quantiles_out(series.quantiles)
                ),
                "worst": [list(entry) for entry in series.worst],
                "invalid": series.invalid,
            }
            for name, series in evidence.series.items()
        },
    }


def restore(policy: Policy, data: dict[str, Any]) -> Evidence | None:
    """The evidence ``snapshot`` made, judged by ``policy``; None when the data is of
    another format or another set of metrics than the policy's."""
    if data.get("format") not in READABLE:
        return None
    if sorted(metric.name for metric in policy.analysis.metrics) != data["metrics"]:
        return None
    from_proxy = data.get("trafficFromProxy", False) is True
    evidence = Evidence(policy, float(data["startedAt"]), traffic_from_proxy=from_proxy)
    if from_proxy:
        _proxy_in(evidence, data["proxy"])
    for index, at in enumerate(data["stepStarts"][1:], start=1):
        evidence.open_step(index, float(at))
    evidence.observed_until = float(data["observedUntil"])
    held: dict[int, int] = {}
    cells: dict[tuple[int, int], tuple[int, int]] = {}  # one object a cell, as when read
    records = _traces_in(data["traces"]) if data["format"] >= 2 else data["traces"]
    for trace_id, arm, ts, step, block, error, scored, pending, expired in records:
        cell = cells.setdefault((step, block), (step, block))
        evidence._traces[trace_id] = _TraceInfo(
            arm=_ARMS[arm],
            ts=ts,
            cell=cell,
            error=error,
            scored=scored,
            pending=pending,
            expired=expired,
        )
        held[block] = held.get(block, 0) + 1
    evidence._held = held
    # the records not yet past the forgetting horizon, in the order they came
    evidence._arrivals = deque(
        (info.ts, trace_id) for trace_id, info in evidence._traces.items() if not info.expired
    )
    stored = _pending_in(data["pending"]) if data["format"] >= 2 else data["pending"]
    pending = [(due, seq, metric, trace_id, value) for due, seq, metric, trace_id, value in stored]
    evidence._pending = pending
    evidence._seq = int(data["seq"])
    counters = data["counters"]
    evidence.forgotten_traces = counters["forgotten"]
    evidence.late_traces = counters["late"]
    evidence.shadow_traces = counters["shadow"]
    evidence.duplicate_traces = counters["duplicate"]
    evidence.orphan_scores = counters["orphan"]
    evidence.closed_blocks = int(data["closedBlocks"])
    evidence.step_traffic = _int_keys_in(data["stepTraffic"])
    evidence.block_errors = _int_keys_in(data["blockErrors"])
    for name, stored in data["series"].items():
        series = evidence.series[name]
        if stored["means"] is not None:
            series.means = _means_in(stored["means"])
        if stored["coverage"] is not None:
            series.coverage = _means_in(stored["coverage"])
        if stored["quantiles"] is not None:
            series.quantiles = _quantiles_in(stored["quantiles"])
        # a heap kept as a list is still a heap, in the same order
        series.worst = [(badness, ts, trace_id) for badness, ts, trace_id in stored["worst"]]
        series.invalid = stored["invalid"]
    return evidence


def _proxy_out(evidence: Evidence) -> dict[str, Any]:
    return {
        "minutes": [
            [side, minute, taken.requests, taken.errors, taken.sampled, _pairs(taken.bins)]
            for (side, minute), taken in evidence._minutes.items()
        ],
        "found": _int_keys_out(evidence._found),
        "loss": _means_out(evidence.loss),
        "lossCheckedUntil": evidence.loss_checked_until,
        "lateRequests": evidence.late_requests,
        "lateFound": evidence.late_found,
        "surplusTraces": evidence.surplus_traces,
    }


def _proxy_in(evidence: Evidence, stored: dict[str, Any]) -> None:
    for side, minute, requests, errors, sampled, bins in stored["minutes"]:
        evidence._minutes[(int(side), int(minute))] = MinuteTaken(
            int(requests), int(errors), int(sampled), {int(i): int(c) for i, c in bins}
        )
    evidence._found = _int_keys_in(stored["found"])
    evidence.loss = _means_in(stored["loss"])
    evidence.loss_checked_until = int(stored["lossCheckedUntil"])
    evidence.late_requests = int(stored["lateRequests"])
    evidence.late_found = int(stored["lateFound"])
    evidence.surplus_traces = int(stored["surplusTraces"])


def _pairs(bins: dict[int, int]) -> list[list[int]]:
    return [[index, count] for index, count in bins.items()]


def _int_keys_out(counts: dict[int, list[int]]) -> list[list[Any]]:
    return [[key, list(value)] for key, value in counts.items()]


def _int_keys_in(stored: list[list[Any]]) -> dict[int, list[int]]:
    return {int(key): list(value) for key, value in stored}


def _means_out(means: MeanSeries) -> dict[str, Any]:
    return {
        "cells": [
            [
                step,
                block,
                [cell.baseline.n, cell.baseline.total, cell.baseline.total_sq],
                [cell.canary.n, cell.canary.total, cell.canary.total_sq],
                list(cell.contribution),
            ]
            for (step, block), cell in means.cells.items()
        ],
        "stepCounts": _int_keys_out(means.step_counts),
        "arms": [list(means.arms[0]), list(means.arms[1])],
        "sums": list(means.sums),
        "canaryBad": means.canary_bad,
    }


def _means_in(stored: dict[str, Any]) -> MeanSeries:
    means = MeanSeries()
    for step, block, base, canary, contribution in stored["cells"]:
        means.cells[(step, block)] = CellMoments(
            baseline=ArmMoments(*base),
            canary=ArmMoments(*canary),
            contribution=(contribution[0], contribution[1], contribution[2], contribution[3]),
        )
    means.step_counts = _int_keys_in(stored["stepCounts"])
    baseline, canary = stored["arms"]
    means.arms = (list(baseline), list(canary))
    means.sums = list(stored["sums"])
    means.canary_bad = stored["canaryBad"]
    return means


def _quantiles_out(quantiles: QuantileSeries) -> list[list[Any]]:
    return [
        [step, _bins_out(base), base.n, _bins_out(canary), canary.n]
        for step, (base, canary) in quantiles.steps.items()
    ]


def _bins_out(sketch: Sketch) -> list[list[int]]:
    return [[index, count] for index, count in sketch.bins.items()]


def _quantiles_in(stored: list[list[Any]]) -> QuantileSeries:
    quantiles = QuantileSeries()
    for step, base_bins, base_n, canary_bins, canary_n in stored:
        quantiles.steps[int(step)] = (
            Sketch({int(i): int(c) for i, c in base_bins}, int(base_n)),
            Sketch({int(i): int(c) for i, c in canary_bins}, int(canary_n)),
        )
    return quantiles


# -- packed columns ------------------------------------------------------------------------
# A column of numbers is an array's bytes, little-endian, in base64: exact, and a tenth of
# the CPU of a JSON list of floats. Flags are one character a record.

_FLAG_ARM = {"b": Arm.BASELINE.value, "c": Arm.CANARY.value}
_ERROR, _EXPIRED, _SCORED = 1, 2, 4


def _packed(typecode: str, values: Any) -> str:
    column = array(typecode, values)
    if sys.byteorder == "big":
        column.byteswap()
    return base64.b64encode(column.tobytes()).decode("ascii")


def _unpacked(typecode: str, text: str) -> list[Any]:
    column = array(typecode)
    column.frombytes(base64.b64decode(text, validate=True))
    if sys.byteorder == "big":
        column.byteswap()
    return column.tolist()


def _traces_out(evidence: Evidence) -> dict[str, Any]:
    infos = list(evidence._traces.values())
    canary = Arm.CANARY
    names: dict[str, list[float]] = {}
    nan = float("nan")
    for index, info in enumerate(infos):
        if info.scored:
            for name, at in info.scored.items():
                column = names.get(name)
                if column is None:
                    column = names[name] = [nan] * len(infos)
                column[index] = at
    return {
        "ids": list(evidence._traces),
        "arms": "".join("c" if info.arm is canary else "b" for info in infos),
        "flags": "".join(
            chr(
                48
                + (_ERROR if info.error else 0)
                + (_EXPIRED if info.expired else 0)
                + (0 if info.scored is None else _SCORED)
            )
            for info in infos
        ),
        "ts": _packed("d", [info.ts for info in infos]),
        "steps": _packed("i", [info.cell[0] for info in infos]),
        "blocks": _packed("i", [info.cell[1] for info in infos]),
        "pending": _packed("i", [info.pending for info in infos]),
        # per score name, when it arrived for each record (NaN: not for this one)
        "scored": {name: _packed("d", column) for name, column in names.items()},
    }


def _traces_in(stored: dict[str, Any]) -> list[tuple[Any, ...]]:
    ids: list[str] = stored["ids"]
    columns = [
        stored["arms"],
        _unpacked("d", stored["ts"]),
        _unpacked("i", stored["steps"]),
        _unpacked("i", stored["blocks"]),
        stored["flags"],
        _unpacked("i", stored["pending"]),
    ]
    scored = {name: _unpacked("d", column) for name, column in stored["scored"].items()}
    if any(len(column) != len(ids) for column in (*columns, *scored.values())):
        raise ValueError("checkpoint: the trace columns are not of one length")
    arms, ts, steps, blocks, flags, pending = columns
    records = []
    for index, trace_id in enumerate(ids):
        flag = ord(flags[index]) - 48
        arrived: dict[str, float] | None = None
        if flag & _SCORED:
            arrived = {
                name: column[index]
                for name, column in scored.items()
                if column[index] == column[index]
            }
        records.append(
            (
                trace_id,
                _FLAG_ARM[arms[index]],
                ts[index],
                steps[index],
                blocks[index],
                bool(flag & _ERROR),
                arrived,
                pending[index],
                bool(flag & _EXPIRED),
            )
        )
    return records


def _pending_out(evidence: Evidence) -> dict[str, Any]:
    pending = evidence._pending
    metrics = sorted({item[2] for item in pending})
    index = {metric: position for position, metric in enumerate(metrics)}
    return {
        "metrics": metrics,
        "due": _packed("d", [item[0] for item in pending]),
        "seq": _packed("q", [item[1] for item in pending]),
        "metric": _packed("i", [index[item[2]] for item in pending]),
        "ids": [item[3] for item in pending],
        # coverage checks carry no value: "n" in ``checks``, and 0.0 in ``values``
        "checks": "".join("v" if item[4] is not None else "n" for item in pending),
        "values": _packed("d", [0.0 if item[4] is None else item[4] for item in pending]),
    }


def _pending_in(stored: dict[str, Any]) -> list[tuple[Any, ...]]:
    metrics: list[str] = stored["metrics"]
    ids: list[str] = stored["ids"]
    due = _unpacked("d", stored["due"])
    seq = _unpacked("q", stored["seq"])
    metric = _unpacked("i", stored["metric"])
    checks: str = stored["checks"]
    values = _unpacked("d", stored["values"])
    if any(len(column) != len(ids) for column in (due, seq, metric, checks, values)):
        raise ValueError("checkpoint: the pending columns are not of one length")
    return [
        (
            due[index],
            seq[index],
            metrics[metric[index]],
            trace_id,
            values[index] if checks[index] == "v" else None,
        )
        for index, trace_id in enumerate(ids)
    ]
