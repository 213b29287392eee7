"""`coalmine status|promote|rollback|pause|resume` against a live admin API on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from coalmine.cli import main
from controller.admin import create_admin_app
from controller.lifecycle import policy_digest
from policies.domain import Phase
from tests.controller.release_rig import RELEASE, TOKEN, Rig, closed_port_url, make_rig, serving


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COALMINE_ADMIN_URL", "COALMINE_ADMIN_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COALMINE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    rig.run(4)
    yield rig
    rig.close()


@pytest.fixture
def url(rig: Rig) -> Iterator[str]:
    with serving(create_admin_app(rig.controller, token=TOKEN, clock=rig.clock)) as base:
        yield base


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_lists_the_releases(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", "--admin-url", url)
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split()[:5] == ["RELEASE", "ROLLOUT", "PHASE", "STEP", "CANARY"]
    assert row.split()[:5] == [RELEASE, "#1", "canary", "1/3", "10%"]
    assert "candidate version 4 against stable version 3" in row


def test_status_of_one_release_shows_metrics_and_decisions(
    rig: Rig, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "status", RELEASE, "--admin-url", url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"release {RELEASE}, rollout #1: canary, step 1/3, canary 10%"
    assert "prompt versions: stable 3, candidate 4" in lines
    assert f"policy in force: {policy_digest(rig.policies[RELEASE])}" in lines
    header = next(line for line in lines if line.startswith("METRIC"))
    assert header.split() == [
        "METRIC",
        "VERDICT",
        "ESTIMATE",
        "[LOWER,",
        "UPPER]",
        "BASELINE",
        "CANARY",
    ]
    errors = next(line for line in lines if line.startswith("errors "))
    assert "[" in errors and "]" in errors
    assert errors.split()[1] in ("pass", "fail", "inconclusive", "nodata")
    assert any(line.startswith("helpfulness ") for line in lines)
    assert "last decisions" in lines
    assert any(" start " in f" {line} " and "controller" in line for line in lines)


def test_status_json_is_the_api_answer(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "--json", "--admin-url", url)
    assert code == 0
    assert json.loads(out)["releases"][0]["name"] == RELEASE
    code, out, _ = run(capsys, "status", RELEASE, "--json", "--admin-url", url)
    assert code == 0
    assert json.loads(out)["judgement"]["metrics"]


def test_rollback_with_a_reason(rig: Rig, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rollback", RELEASE, "--reason", "bad answers", "--admin-url", url)
    assert (code, err) == (0, "")
    assert out == f"release {RELEASE}, rollout #1: rolled_back, canary 0%\n"
    assert rig.release().phase is Phase.ROLLED_BACK
    record = rig.state.decisions(RELEASE)[-1]
    assert (record.decision, record.actor, record.reason) == (
        "rollback",
        "admin-api",
        "bad answers",
    )


def test_pause_resume_and_promote(rig: Rig, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "pause", RELEASE, "--admin-url", url)[:2] == (
        0,
        f"release {RELEASE}, rollout #1: paused, canary 10%\n",
    )
    assert run(capsys, "resume", RELEASE, "--admin-url", url)[0] == 0
    assert rig.release().phase is Phase.CANARY
    assert run(capsys, "promote", RELEASE, "--admin-url", url)[0] == 0
    assert rig.release().phase is Phase.PROMOTED
    assert rig.labels.positions["production"] == 4


def test_status_says_when_the_policy_was_edited_during_the_rollout(
    rig: Rig, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    running = rig.policies[RELEASE]
    rig.policies[RELEASE] = running.model_copy(update={"steps": running.steps[:2]})
    code, out, _ = run(capsys, "status", RELEASE, "--admin-url", url)
    assert code == 0
    assert (
        f"policy in force: {policy_digest(running)} (edited since this rollout started: "
        "the edit's steps and analysis apply from the next rollout)"
    ) in out.splitlines()


def test_start_rolls_a_judged_candidate_out_again(
    rig: Rig, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "rollback", RELEASE, "--admin-url", url)[0] == 0
    rig.labels.positions["canary"] = 4  # the rolled-back version, labelled again by hand
    rig.run(1)
    code, out, err = run(capsys, "status", RELEASE, "--admin-url", url)
    assert "version 4 was judged by rollout 1 (rolled_back)" in out
    code, out, err = run(capsys, "start", RELEASE, "--reason", "fixed upstream", "--admin-url", url)
    assert (code, err) == (0, "")
    assert out == f"release {RELEASE}, rollout #2: canary, canary 10%\n"
    code, out, err = run(capsys, "start", RELEASE, "--admin-url", url)
    assert (code, out) == (2, "")
    assert err == (
        f"coalmine: cannot start release '{RELEASE}': rollout 2 is canary; "
        "abort or roll it back first\n"
    )


def test_an_action_that_does_not_apply_exits_2_with_the_reason(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "resume", RELEASE, "--admin-url", url)
    assert (code, out) == (2, "")
    assert err == f"coalmine: cannot resume release '{RELEASE}': rollout 1 is canary\n"


def test_an_unknown_release_exits_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "nothing", "--admin-url", url)
    assert (code, err) == (2, "coalmine: no release named 'nothing'\n")


def test_a_wrong_token_is_refused(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COALMINE_ADMIN_TOKEN", "not-the-token")
    code, _, err = run(capsys, "rollback", RELEASE, "--admin-url", url)
    assert code == 2
    assert err == f"coalmine: admin token refused by {url}\n"


def test_the_token_comes_from_a_file(
    rig: Rig,
    url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COALMINE_ADMIN_TOKEN")
    secret = tmp_path / "token"
    secret.write_text(f"{TOKEN}\n", encoding="utf-8")
    assert run(capsys, "status", "--admin-url", url, "--token-file", str(secret))[0] == 0
    monkeypatch.setenv("COALMINE_ADMIN_TOKEN_FILE", str(secret))
    assert run(capsys, "status", "--admin-url", url)[0] == 0


def test_the_url_comes_from_the_environment(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COALMINE_ADMIN_URL", url)
    code, out, _ = run(capsys, "status")
    assert code == 0
    assert RELEASE in out


def test_no_token_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COALMINE_ADMIN_TOKEN")
    code, _, err = run(capsys, "status", "--admin-url", closed_port_url())
    assert code == 2
    assert err.startswith("coalmine: no admin token: give --token-file")


def test_an_unreadable_token_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    code, _, err = run(capsys, "status", "--token-file", str(missing))
    assert code == 2
    assert err.startswith(f"coalmine: --token-file: cannot read {missing}")


def test_an_unreachable_api_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    address = closed_port_url()
    code, out, err = run(capsys, "status", "--admin-url", address)
    assert (code, out) == (1, "")
    assert err.startswith(f"coalmine: cannot reach the admin API at {address}: ")
    assert err.count("\n") == 1


def test_a_bad_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "--admin-url", "localhost:9465")
    assert code == 2
    assert err == "coalmine: --admin-url: 'localhost:9465' is not an http or https URL\n"
