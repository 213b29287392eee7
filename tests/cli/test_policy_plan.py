"""`coalmine policy plan`: the plan as a table and as JSON, and bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coalmine.cli import main

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: plan-cli
target: {prompt: {name: plan-cli}}
steps:
  - {weight: 20, minDuration: 5m}
  - {weight: 50, minDuration: 5m, maxDuration: 1h}
analysis:
  interval: 1m
  scoreTimeout: 5m
  metrics:
    - {name: helpfulness, source: score, score: helpfulness, tolerance: 0.1, effectSize: 0.1, critical: true}
    - {name: errors, source: error_rate, tolerance: 0.05, critical: true}
    - {name: cost, source: cost, tolerancePercent: 30}
"""  # noqa: E501


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "plan-cli.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


def coalmine(
    capsys: pytest.CaptureFixture[str], *args: str | Path, jobs: str = "1"
) -> tuple[int, str, str]:
    """`coalmine policy plan ARGS...` in-process, in one process unless ``jobs`` says."""
    capsys.readouterr()
    code = main(["policy", "plan", "--jobs", jobs, *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_parses_and_names_every_step_and_metric(
    policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = coalmine(
        capsys,
        policy,
        "--traffic",
        "1/s",
        "--runs",
        "2",
        "--seed",
        "4",
        "--output",
        "json",
        "--regression",
        "cost=80",
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["release"] == "plan-cli"
    assert (plan["traffic_per_minute"], plan["runs"], plan["seed"]) == (60.0, 2, 4)
    assert plan["interval_s"] == 60.0
    assert [step["step"] for step in plan["steps"]] == [1, 2]
    assert [step["weight"] for step in plan["steps"]] == [20.0, 50.0]
    assert [item["metric"] for item in plan["regressions"]] == ["helpfulness", "errors", "cost"]
    assert set(plan["baseline"]) == {"helpfulness", "errors", "cost"}
    cost = plan["regressions"][2]
    assert (cost["regression"], cost["unit"], cost["expected"]) == (80.0, "%", "paused")
    assert sum(plan["equal_canary"]["outcomes"].values()) == 2
    assert set(plan["equal_canary"]["time_to_promote_s"]) == {"median", "p90"}
    for step in plan["steps"]:
        assert set(step["samples_per_arm"]) == {"baseline", "canary"}
    assert isinstance(plan["warnings"], list)
    assert plan["wall_time_s"] > 0


def test_text_output_is_a_table_of_steps_and_metrics(
    policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = coalmine(capsys, policy, "--traffic", "120/min", "--runs", "2")
    assert code == 0, err
    assert err == ""
    assert out.startswith(f"plan of release plan-cli ({policy})\ntraffic 120/min")
    lines = out.splitlines()
    steps = lines.index(next(line for line in lines if line.lstrip().startswith("step  weight")))
    assert [line.split()[:2] for line in lines[steps + 1 : steps + 3]] == [
        ["1", "20%"],
        ["2", "50%"],
    ]
    metrics = lines.index(next(line for line in lines if line.lstrip().startswith("metric ")))
    rows = [line.split()[0] for line in lines[metrics + 1 : metrics + 4]]
    assert rows == ["helpfulness", "errors", "cost"]
    assert "2 runs of 4 canaries in " in lines[-1]


@pytest.mark.slow
def test_worker_processes_give_the_same_plan(
    policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--traffic", "90/min", "--runs", "3", "--output", "json")
    code, alone, err = coalmine(capsys, policy, *flags)
    assert code == 0, err
    code, pooled, err = coalmine(capsys, policy, *flags, jobs="2")
    assert code == 0, err
    first, second = json.loads(alone), json.loads(pooled)
    assert first.pop("wall_time_s") > 0
    assert second.pop("wall_time_s") > 0
    assert first == second


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--traffic", "120"], "--traffic: '120' must be requests per unit of time"),
        (["--traffic", "0/min"], "--traffic: '0/min' must be more than zero"),
        (["--traffic", "fast"], "--traffic: 'fast' must be requests per unit of time"),
        (["--traffic", "1/min", "--scores-per-trace", "1.5"], "--scores-per-trace: 1.5 is not"),
        (["--traffic", "1/min", "--runs", "0"], "--runs: 0 is not between 1 and 1000"),
        (["--traffic", "1/min", "--jobs", "0"], "--jobs: 0 must be at least 1"),
        (["--traffic", "1/min", "--regression", "latency=5"], "no such metric in plan-cli"),
        (["--traffic", "1/min", "--regression", "errors=-0.1"], "must be a positive number"),
        (["--traffic", "1/min", "--regression", "errors"], "must be METRIC=DELTA"),
        (["--traffic", "1/min", "--regression", "errors=x"], "'x' is not a number"),
        (["--traffic", "1/min", "--regression", "errors=2"], "outside 0..1"),
        (
            ["--traffic", "1/min", "--regression", "errors=0.1", "--regression", "errors=0.2"],
            "--regression errors: given twice",
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    policy: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code, out, err = coalmine(capsys, policy, *flags)
    assert code == 2
    assert out == ""
    assert message in err
    assert err.startswith("coalmine: ")
    assert err.count("\n") == 1


def test_usage_errors_exit_2(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert coalmine(capsys, policy)[0] == 2  # --traffic is required
    assert coalmine(capsys, policy, "--traffic", "1/s", "--output", "xml")[0] == 2
    assert coalmine(capsys, policy, "--traffic", "1/s", "--runs", "many")[0] == 2


def test_a_bad_policy_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    code, _, err = coalmine(capsys, missing, "--traffic", "1/s")
    assert code == 2
    assert str(missing) in err
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace("tolerance: 0.05", "tolerance: -1"), encoding="utf-8")
    code, _, err = coalmine(capsys, broken, "--traffic", "1/s")
    assert code == 2
    assert f"{broken}:" in err
    assert "tolerance" in err
