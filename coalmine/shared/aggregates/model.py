"""One proxy's counts of one release's arm in one minute, and their JSON form.

A cell counts the requests a proxy answered for a release and arm whose request arrived
in a UTC minute: how many, how many were errors, and their latency in the judge's
log-spaced bins (``policies.latency_bins``). An error is an answer of status 500 or more,
or a failure on the proxy's side of the upstream call (could not connect, timed out, the
upstream cut its response); a 4xx is not an error, nor is a client that went away. The
latency is the time from the request's arrival to the end of its response (for a client
that went away, to when it went), in milliseconds, as the judge's latency metric is.
A cell also counts the requests in the release's score sample (``coalmine.shared.sampling``)
and, of the requests whose response reported its usage, the tokens and the moments of
the cost (count, sum, sum of squares: what a test of the mean needs).

Cells of several proxies add up (``merge``). The JSON form is compact: ``{"n": requests,
"e": errors, "l": bins}`` where ``l`` lists the bins in increasing order, run-length
style: the first bin and its count, then for each next bin the step from the one before
and its count; the sample and usage fields follow under short keys (``s``, ``u``, ``pt``,
``ct``, ``cn``, ``cs``, ``cq``), each left out when zero. A document that does not read as
that is refused with an error naming where it was stored, never taken as zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from policies.domain import Arm
from policies.latency_bins import ZERO_BIN

MINUTE_SECONDS = 60
DEFAULT_RETENTION_SECONDS = 7200
"""How long a proxy keeps its minutes where the controller reads them."""
DOCUMENT_VERSION = 1

CellKey = tuple[str, Arm, int]
"""(release, arm, minute)."""


class BadAggregatesError(Exception):
    """A stored document is not a valid set of proxy counts."""


@dataclass(frozen=True, slots=True)
class MinuteCell:
    """Counts of one release's arm in one minute (start of the UTC minute, in whole
    seconds since the epoch). ``latency_bins``: bin → requests; it adds up to
    ``requests``. Do not change the mapping: cells are shared."""

    release: str
    arm: Arm
    minute: int
    requests: int
    errors: int
    latency_bins: Mapping[int, int] = field(default_factory=dict, hash=False)
    sampled: int = 0
    """Requests in the release's score sample."""
    usage: int = 0
    """Requests whose response reported its usage (tokens)."""
    prompt_tokens: int = 0
    """Sum over the ``usage`` requests."""
    completion_tokens: int = 0
    """Sum over the ``usage`` requests."""
    cost_n: int = 0
    """Requests whose response reported its cost (in US dollars)."""
    cost_sum: float = 0.0
    """Sum of their costs."""
    cost_sumsq: float = 0.0
    """Sum of the squares of their costs."""

    @property
    def key(self) -> CellKey:
        return (self.release, self.arm, self.minute)


def minute_of(epoch_ns: int) -> int:
    """Start of the UTC minute of a time in nanoseconds since the epoch, in seconds."""
    return epoch_ns // 60_000_000_000 * MINUTE_SECONDS


def oldest_minute(now: float, retention_seconds: int) -> int:
    """The first minute a store keeps at ``now`` (epoch seconds)."""
    return int(now - retention_seconds) // MINUTE_SECONDS * MINUTE_SECONDS


def merge(cells: Iterable[MinuteCell]) -> dict[CellKey, MinuteCell]:
    """The cells summed per (release, arm, minute): the counts of several proxies."""
    totals: dict[CellKey, list[Any]] = {}
    bins: dict[CellKey, dict[int, int]] = {}
    for cell in cells:
        key = cell.key
        found = totals.get(key)
        if found is None:
            found = totals[key] = [0, 0, 0, 0, 0, 0, 0, 0.0, 0.0]
        found[0] += cell.requests
        found[1] += cell.errors
        found[2] += cell.sampled
        found[3] += cell.usage
        found[4] += cell.prompt_tokens
        found[5] += cell.completion_tokens
        found[6] += cell.cost_n
        found[7] += cell.cost_sum
        found[8] += cell.cost_sumsq
        summed = bins.setdefault(key, {})
        for index, count in cell.latency_bins.items():
            summed[index] = summed.get(index, 0) + count
    return {
        key: MinuteCell(key[0], key[1], key[2], n, e, bins[key], s, u, pt, ct, cn, cs, cq)
        for key, (n, e, s, u, pt, ct, cn, cs, cq) in totals.items()
    }


# -- JSON ---------------------------------------------------------------------------------

_Count = Annotated[int, Field(ge=0, le=2**53)]
_Sum = Annotated[float, Field(ge=0)]
_BIN_LIMIT = -ZERO_BIN


class _Counts(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    n: _Count
    e: _Count
    l: list[int]  # noqa: E741 (wire name)
    s: _Count = 0
    u: _Count = 0
    pt: _Count = 0
    ct: _Count = 0
    cn: _Count = 0
    cs: _Sum = 0.0
    cq: _Sum = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> _Counts:
        if self.e > self.n:
            raise ValueError(f"{self.e} errors out of {self.n} requests")
        self._check_sample_and_usage()
        runs = self.l
        if len(runs) % 2:
            raise ValueError("l: bin and count pairs expected, found an odd length")
        if any(step < 1 for step in runs[2::2]):
            raise ValueError("l: bins must increase")
        if runs and not (runs[0] >= -_BIN_LIMIT and sum(runs[0::2]) <= _BIN_LIMIT):
            raise ValueError(f"l: bins must lie within ±{_BIN_LIMIT}")
        if any(count < 1 for count in runs[1::2]):
            raise ValueError("l: counts must be positive")
        if sum(runs[1::2]) != self.n:
            raise ValueError(f"l: latencies of {sum(runs[1::2])} requests, not {self.n}")
        return self

    def _check_sample_and_usage(self) -> None:
        if self.s > self.n:
            raise ValueError(f"{self.s} sampled out of {self.n} requests")
        if self.u > self.n:
            raise ValueError(f"usage of {self.u} out of {self.n} requests")
        if self.cn > self.u:
            raise ValueError(f"costs of {self.cn} requests, but usage of {self.u}")
        if not self.u and (self.pt or self.ct):
            raise ValueError("tokens without any usage")
        if not self.cn and (self.cs or self.cq):
            raise ValueError("a cost sum without any cost")


class _Document(BaseModel):
    """A proxy's cells of several releases: release → arm → minute → counts."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: Literal[1]
    proxy: str = Field(min_length=1, max_length=253)
    cells: dict[str, dict[str, dict[str, _Counts]]]


def counts_json(cell: MinuteCell) -> dict[str, Any]:
    """The counts of a cell as JSON data (its release, arm and minute are stored beside)."""
    runs: list[int] = []
    previous: int | None = None
    for index in sorted(cell.latency_bins):
        runs += (index if previous is None else index - previous, cell.latency_bins[index])
        previous = index
    counts: dict[str, Any] = {"n": cell.requests, "e": cell.errors, "l": runs}
    optional = (
        ("s", cell.sampled),
        ("u", cell.usage),
        ("pt", cell.prompt_tokens),
        ("ct", cell.completion_tokens),
        ("cn", cell.cost_n),
        ("cs", cell.cost_sum),
        ("cq", cell.cost_sumsq),
    )
    counts.update((key, value) for key, value in optional if value)
    return counts


def encode_counts(cell: MinuteCell) -> str:
    return json.dumps(counts_json(cell), separators=(",", ":"))


def _cell(counts: _Counts, release: str, arm: Arm, minute: int) -> MinuteCell:
    bins: dict[int, int] = {}
    index = 0
    for position in range(0, len(counts.l), 2):
        index = counts.l[position] if position == 0 else index + counts.l[position]
        bins[index] = counts.l[position + 1]
    return MinuteCell(
        release,
        arm,
        minute,
        counts.n,
        counts.e,
        bins,
        counts.s,
        counts.u,
        counts.pt,
        counts.ct,
        counts.cn,
        counts.cs,
        counts.cq,
    )


def decode_counts(document: str, release: str, arm: Arm, minute: int, *, where: str) -> MinuteCell:
    """A stored counts document as the cell of (release, arm, minute).

    Raises BadAggregatesError, naming ``where``, when it is not one."""
    try:
        counts = _Counts.model_validate_json(document)
    except ValidationError as error:
        raise BadAggregatesError(f"{where}: {_problems(error)}") from None
    return _cell(counts, release, arm, minute)


def encode_document(proxy: str, cells: Iterable[MinuteCell]) -> str:
    """One proxy's cells as one compact JSON document."""
    tree: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for cell in sorted(cells, key=lambda cell: (cell.release, cell.arm.value, cell.minute)):
        by_arm = tree.setdefault(cell.release, {}).setdefault(cell.arm.value, {})
        by_arm[str(cell.minute)] = counts_json(cell)
    return json.dumps({"v": DOCUMENT_VERSION, "proxy": proxy, "cells": tree}, separators=(",", ":"))


def decode_document(document: str, *, where: str) -> tuple[str, list[MinuteCell]]:
    """A proxy's document as its id and cells.

    Raises BadAggregatesError, naming ``where`` and the place inside, when it is not one."""
    try:
        parsed = _Document.model_validate_json(document)
    except ValidationError as error:
        raise BadAggregatesError(f"{where}: {_problems(error)}") from None
    cells: list[MinuteCell] = []
    for release, by_arm in parsed.cells.items():
        for arm_name, by_minute in by_arm.items():
            arm = parse_arm(arm_name, f"{where}: cells.{release}")
            for minute_text, counts in by_minute.items():
                minute = _minute(minute_text, f"{where}: cells.{release}.{arm_name}")
                cells.append(_cell(counts, release, arm, minute))
    return parsed.proxy, cells


def parse_arm(value: str, where: str) -> Arm:
    """A stored arm name as the arm (shadow copies are never counted)."""
    if value not in (Arm.BASELINE, Arm.CANARY):
        raise BadAggregatesError(f"{where}: {value!r} is not an arm (baseline, canary)")
    return Arm(value)


def _minute(text: str, where: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) % MINUTE_SECONDS:
        raise BadAggregatesError(f"{where}: {text!r} is not the start of a minute")
    return int(text)


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or '(document)'}: {item['msg']}"
        for item in error.errors(include_url=False)
    )
