import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bench import harness
from bench.baselines import FixedHorizon, Method, OracleSPRT, Outcome, PeekingZ
from bench.scenarios import Run


class _AlwaysPause:
    name = "always-pause"

    def decide(self, run: Run) -> Outcome:
        return Outcome("pause", 3.0, "test")


def test_rows_are_complete_and_seeded() -> None:
    methods: list[Method] = [PeekingZ(), FixedHorizon(30), OracleSPRT(), _AlwaysPause()]
    rows = harness.run_benchmark(methods, ["neutral", "very-bad"], runs=24, seed=3, workers=1)
    assert [(r.scenario, r.method) for r in rows] == [
        (s, m.name) for s in ("neutral", "very-bad") for m in methods
    ]
    for r in rows:
        assert r.runs == 24
        assert r.rollback + r.promote + r.pause + r.undecided == pytest.approx(1.0)
        assert r.rollback_se == pytest.approx(np.sqrt(r.rollback * (1 - r.rollback) / 24))
    by = {(r.scenario, r.method): r for r in rows}
    assert by["neutral", "always-pause"].pause == 1.0
    assert by["neutral", "fixed-30"].promote_minutes_median == 30
    # Efficiency only on bad-truth scenarios, relative to the oracle.
    assert by["neutral", "peeking-z"].efficiency is None
    assert by["very-bad", "oracle-sprt"].efficiency == pytest.approx(1.0)
    oracle_mean = by["very-bad", "oracle-sprt"].rollback_minutes_mean
    assert oracle_mean is not None
    assert by["very-bad", "fixed-30"].efficiency == pytest.approx(oracle_mean / 30)
    assert by["very-bad", "always-pause"].efficiency is None
    again = harness.run_benchmark(methods, ["neutral", "very-bad"], runs=24, seed=3, workers=1)
    # Identical up to the measured CPU time.
    assert [dataclasses.replace(r, ms_per_run=0.0) for r in again] == [
        dataclasses.replace(r, ms_per_run=0.0) for r in rows
    ]


def test_pool_gives_the_same_decisions_as_one_process() -> None:
    methods: list[Method] = [PeekingZ(), OracleSPRT()]
    one = harness.run_benchmark(methods, ["bad"], runs=16, seed=2, workers=1)
    two = harness.run_benchmark(methods, ["bad"], runs=16, seed=2, workers=2)
    assert [dataclasses.replace(r, ms_per_run=0.0) for r in one] == [
        dataclasses.replace(r, ms_per_run=0.0) for r in two
    ]


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        harness.run_benchmark([PeekingZ()], ["nope"], runs=1, seed=1, workers=1)
    with pytest.raises(ValueError, match="unique"):
        harness.run_benchmark([PeekingZ(), PeekingZ()], ["neutral"], runs=1, seed=1, workers=1)


def test_coalmine_method_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bench.coalmine_method", None)
    methods, warning = harness.default_methods()
    assert warning is not None
    assert warning.startswith("warning: coalmine method skipped")
    assert "coalmine" not in [m.name for m in methods]

    fake = types.ModuleType("bench.coalmine_method")

    class CoalmineJudge(_AlwaysPause):
        name = "coalmine"

    fake.CoalmineJudge = CoalmineJudge  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.coalmine_method", fake)
    methods, warning = harness.default_methods()
    assert warning is None
    assert [m.name for m in methods][-1] == "coalmine"


def test_cli_writes_markdown_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bench.coalmine_method", None)
    argv = [
        "--runs",
        "6",
        "--scenarios",
        "neutral,bad",
        "--methods",
        "peeking-z,oracle-sprt",
        "--workers",
        "1",
        "--out",
        str(tmp_path),
        "--traffic",
        "50/50",
    ]
    assert harness.main(argv) == 0
    out = capsys.readouterr()
    assert "warning: coalmine method skipped" in out.err
    md = (tmp_path / "decision_quality.md").read_text()
    assert "python -m bench.harness --runs 6 --scenarios neutral,bad" in md
    assert "### bad (truth: bad" in md
    assert "| peeking-z |" in md
    assert md.strip() == out.out.strip()
    data = json.loads((tmp_path / "decision_quality.json").read_text())
    assert data["traffic"] == "50/50"
    assert len(data["rows"]) == 4
    assert {r["method"] for r in data["rows"]} == {"peeking-z", "oracle-sprt"}
