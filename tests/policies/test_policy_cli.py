"""`coalmine policy validate|schema`."""

from __future__ import annotations

from pathlib import Path

import pytest

from coalmine.cli import main
from policies import EXAMPLES_DIR, policy_json_schema_text

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))

BAD = """\
apiVersion: coalmine/v1
kind: Release
name: bad
target: {}
steps:
  - {weight: 50}
  - {weight: 10}
analysis:
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.01}
"""


def test_validate_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", *map(str, EXAMPLES)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"ok: {EXAMPLES_DIR / name} (release {release}, {steps} steps, {metrics} metrics)"
        for name, release, steps, metrics in [
            ("agent-canary.yaml", "support-agent-v42", 3, 7),
            ("prompt-canary.yaml", "support-agent-prompt", 3, 4),
            ("prompt-shadow.yaml", "summarizer-shadow", 3, 4),
            ("release-ladder.yaml", "faq-ladder", 2, 3),
        ]
    ]


def test_validate_reports_every_issue_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    missing = tmp_path / "missing.yaml"
    good = EXAMPLES[0]
    assert main(["policy", "validate", str(bad), str(good), str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"ok: {good} ")
    assert err.splitlines() == [
        f"{bad}:4:9: target: needs prompt or upstreams",
        f"{bad}:7:14: steps[1].weight: must be greater than the previous step's weight (50)",
        f"{missing}:1:1: <document>: file not found",
        "coalmine: 3 problems in 2 of 3 policy files",
    ]


def test_validate_one_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD.replace("target: {}", "target: {upstreams: {stable: 'http://a'}}"))
    assert main(["policy", "validate", str(bad)]) == 2
    _, err = capsys.readouterr()
    assert err.splitlines()[-1] == "coalmine: 1 problem in 1 of 1 policy file"


def test_validate_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate"]) == 2
    _, err = capsys.readouterr()
    assert "Missing argument" in err


def test_schema_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    out, err = capsys.readouterr()
    assert out == policy_json_schema_text()
    assert err == ""


def test_schema_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "schema.json"
    assert main(["policy", "schema", "--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == policy_json_schema_text()
    out, _ = capsys.readouterr()
    assert out == f"wrote {output}\n"


def test_schema_to_unwritable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "no-such-dir" / "schema.json"
    assert main(["policy", "schema", "--output", str(output)]) == 2
    _, err = capsys.readouterr()
    assert err.startswith(f"coalmine: cannot write {output}")
