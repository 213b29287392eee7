"""A stand-in for an LLM-as-judge evaluator: it scores finished traces, late and noisily.

Every poll reads, through Langfuse's observations v2 API, the generations that carry a
``quality`` in their metadata (the sample agent records it) and ended at least
``delay_seconds`` ago, within the last ``lookback_seconds``. For each trace not scored
yet it posts one NUMERIC score ``helpfulness`` on the trace:

    value = clip(mean quality of the trace's generations + N(0, noise), 0, 1)

The noise is drawn from a generator seeded with ``(seed, trace id)``, so a trace gets
the same value in every run, whatever else was scored before. Score ids are derived
from the trace id and score name too, so a score posted twice (a restart, a retry)
replaces itself instead of counting twice. Generations that failed carry no quality
and are never scored, as a judge has no answer to grade.

    LANGFUSE_BASE_URL=http://127.0.0.1:3000 LANGFUSE_PUBLIC_KEY=pk-lf-coalmine-local \\
    LANGFUSE_SECRET_KEY=sk-lf-coalmine-local \\
        python -m coalmine.demo.evaluator --delay-seconds 5 --noise 0.1 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx

logger = logging.getLogger("coalmine.demo.evaluator")

OBSERVATIONS: Final = "/api/public/v2/observations"
SCORES: Final = "/api/public/scores"
QUALITY_KEY: Final = "quality"
SCORE_BATCH: Final = 100
_SCORE_NAMESPACE: Final = uuid.UUID("8c0f3f7e-3a53-4c55-9a59-6a1e0f0c5e11")


@dataclass(frozen=True)
class EvaluatorSettings:
    """How the judge behaves."""

    delay_seconds: float = 60.0
    """How long after a generation ends its trace is scored."""
    noise: float = 0.1
    """Standard deviation of the judge's Gaussian noise."""
    seed: int = 0
    lookback_seconds: float = 3600.0
    """Generations that started longer ago than this are not read (nor scored)."""
    score_name: str = "helpfulness"
    page_size: int = 1000


@dataclass(frozen=True)
class Judgement:
    """One score the judge posted."""

    trace_id: str
    quality: float
    value: float
    score_id: str


@dataclass
class Evaluator:
    """Scores each finished trace once; ``http`` is a client with Langfuse's base URL
    and the project's keys."""

    http: httpx.Client
    settings: EvaluatorSettings = field(default_factory=EvaluatorSettings)
    scored: dict[str, float] = field(default_factory=dict)
    """Trace ids already scored, with the time of the poll that scored them."""

    def run_once(self, now: float) -> list[Judgement]:
        """Score the traces whose generations ended at least ``delay_seconds`` before
        ``now`` (seconds since the epoch). Raises ``httpx.HTTPError`` when Langfuse
        cannot be read or refuses the scores; nothing is remembered as scored then."""
        qualities: dict[str, list[float]] = {}
        for row in self._finished_generations(now):
            trace_id, quality = row.get("traceId"), _quality(row.get("metadata"))
            if isinstance(trace_id, str) and quality is not None and trace_id not in self.scored:
                qualities.setdefault(trace_id, []).append(quality)
        judgements = [
            self.judge(trace_id, sum(values) / len(values))
            for trace_id, values in sorted(qualities.items())
        ]
        for start in range(0, len(judgements), SCORE_BATCH):
            batch = judgements[start : start + SCORE_BATCH]
            self._post(batch)
            self.scored.update((j.trace_id, now) for j in batch)
        self._forget(now)
        return judgements

    def judge(self, trace_id: str, quality: float) -> Judgement:
        """The judge's noisy reading of one trace's quality."""
        draw = random.Random(f"{self.settings.seed}:{trace_id}").gauss(0.0, self.settings.noise)
        value = min(1.0, max(0.0, quality + draw))
        score_id = str(uuid.uuid5(_SCORE_NAMESPACE, f"{trace_id}:{self.settings.score_name}"))
        return Judgement(trace_id, quality, round(value, 6), score_id)

    def _finished_generations(self, now: float) -> Iterator[Mapping[str, Any]]:
        conditions = [
            {"type": "string", "column": "type", "operator": "=", "value": "GENERATION"},
            {
                "type": "numberObject",
                "column": "metadata",
                "key": QUALITY_KEY,
                "operator": ">=",
                "value": 0,
            },
            {
                "type": "datetime",
                "column": "startTime",
                "operator": ">=",
                "value": _iso(now - self.settings.lookback_seconds),
            },
            {
                "type": "datetime",
                "column": "endTime",
                "operator": "<=",
                "value": _iso(now - self.settings.delay_seconds),
            },
        ]
        params: dict[str, Any] = {
            "fields": "core,metadata",
            "expandMetadata": QUALITY_KEY,
            "limit": self.settings.page_size,
            "filter": json.dumps(conditions),
        }
        while True:
            response = self.http.get(OBSERVATIONS, params=params)
            response.raise_for_status()
            body = response.json()
            yield from (row for row in body.get("data", []) if isinstance(row, dict))
            cursor = (body.get("meta") or {}).get("cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    def _post(self, batch: list[Judgement]) -> None:
        payload = [
            {
                "id": j.score_id,
                "traceId": j.trace_id,
                "name": self.settings.score_name,
                "value": j.value,
                "dataType": "NUMERIC",
                "comment": "sandbox judge: quality plus noise",
            }
            for j in batch
        ]
        response = self.http.post(SCORES, json=payload)
        response.raise_for_status()
        if response.status_code == 207:  # some refused for good: retrying would not help
            logger.warning("some scores were refused: %s", response.text[:500])

    def _forget(self, now: float) -> None:
        """Drop traces that have left the window every poll reads."""
        horizon = now - self.settings.lookback_seconds - self.settings.delay_seconds
        for trace_id in [t for t, at in self.scored.items() if at < horizon]:
            del self.scored[trace_id]


def _quality(metadata: object) -> float | None:
    """The ``quality`` of a row's metadata (a number, or a number as a string)."""
    if not isinstance(metadata, Mapping):
        return None
    value = metadata.get(QUALITY_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        quality = float(value)
    except ValueError:
        return None
    return quality if math.isfinite(quality) else None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# ------------------------------------------------------------------------ command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m coalmine.demo.evaluator",
        description="Score finished traces of the sample agent, late and noisily.",
    )
    parser.add_argument("--delay-seconds", type=float, default=60.0)
    parser.add_argument("--noise", type=float, default=0.1, help="standard deviation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    parser.add_argument("--lookback-seconds", type=float, default=3600.0)
    parser.add_argument("--score-name", default="helpfulness")
    parser.add_argument("--once", action="store_true", help="poll once and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    public_key = os.environ.get("LANGFUSE_PUBLIC_KEY")
    secret_key = os.environ.get("LANGFUSE_SECRET_KEY")
    base_url = os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST")
    if not (public_key and secret_key and base_url):
        print(
            "error: set LANGFUSE_BASE_URL, LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY",
            file=sys.stderr,
        )
        return 2
    if min(args.delay_seconds, args.noise, args.lookback_seconds) < 0 or args.interval <= 0:
        print("error: durations and noise must not be negative", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = EvaluatorSettings(
        delay_seconds=args.delay_seconds,
        noise=args.noise,
        seed=args.seed,
        lookback_seconds=args.lookback_seconds,
        score_name=args.score_name,
    )
    with httpx.Client(base_url=base_url, auth=(public_key, secret_key), timeout=30.0) as http:
        try:
            return _loop(Evaluator(http, settings), interval=args.interval, once=args.once)
        except KeyboardInterrupt:
            return 0


def _loop(evaluator: Evaluator, *, interval: float, once: bool) -> int:
    name = evaluator.settings.score_name
    while True:
        try:
            judgements = evaluator.run_once(time.time())
        except httpx.HTTPError as error:
            logger.warning("poll failed, retrying: %s", error)
            if once:
                return 1
        else:
            for j in judgements:
                logger.info("%s %s=%.3f (quality %.3f)", j.trace_id, name, j.value, j.quality)
            if once:
                return 0
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
