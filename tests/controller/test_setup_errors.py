"""`coalmine run` and `coalmine controller` refuse a set-up they cannot start with: exit
status 2, one line on stderr that says what and where, no traceback, and the state file
left as it was."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from coalmine.cli import main
from coalmine.shared.routing_tables.store import BadStoreFileError, SqliteRoutingStore
from controller.errors import StateFileError
from controller.release_store import ControllerState

EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"
REPO = EXAMPLES.parents[1]
TOKEN = "setup-errors-token-0123456789abcdef"  # strong enough: 35 characters
WEAK = "short-admin-token"


def _no_token(work: Path) -> dict[str, str]:
    return {}


def _missing_token_file(work: Path) -> dict[str, str]:
    return {"COALMINE_ADMIN_TOKEN_FILE": str(work / "no-such-token")}


def _short_token(work: Path) -> dict[str, str]:
    return {"COALMINE_ADMIN_TOKEN": WEAK}


def _placeholder_token_file(work: Path) -> dict[str, str]:
    (work / "token").write_text("0" * 40 + "\n", encoding="utf-8")
    return {"COALMINE_ADMIN_TOKEN_FILE": str(work / "token")}


def _garbage_state(work: Path) -> dict[str, str]:
    (work / "state.db").write_bytes(b"this is not SQLite at all\n" * 200)
    return {"COALMINE_ADMIN_TOKEN": TOKEN}


def _truncated_state(work: Path) -> dict[str, str]:
    real = work / "real.db"
    ControllerState(real).close()
    (work / "state.db").write_bytes(real.read_bytes()[:100])
    return {"COALMINE_ADMIN_TOKEN": TOKEN}


def _foreign_sqlite_state(work: Path) -> dict[str, str]:
    with sqlite3.connect(work / "state.db") as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    return {"COALMINE_ADMIN_TOKEN": TOKEN}


def _state_is_a_directory(work: Path) -> dict[str, str]:
    (work / "state.db").mkdir()
    return {"COALMINE_ADMIN_TOKEN": TOKEN}


@dataclass(frozen=True)
class Case:
    arrange: Callable[[Path], dict[str, str]]
    says: tuple[str, ...]
    """Pieces of the one stderr line (the work directory written as {work})."""


CASES = {
    "no token": Case(_no_token, ("COALMINE_ADMIN_TOKEN", "COALMINE_ADMIN_TOKEN_FILE")),
    "missing token file": Case(
        _missing_token_file,
        ("COALMINE_ADMIN_TOKEN_FILE", "{work}/no-such-token", "No such file or directory"),
    ),
    "short token": Case(
        _short_token,
        ("COALMINE_ADMIN_TOKEN: ", "too weak (17 characters, 13 different)", "at least 32"),
    ),
    "placeholder token file": Case(
        _placeholder_token_file,
        ("COALMINE_ADMIN_TOKEN_FILE {work}/token: ", "too weak (40 characters, 1 different)"),
    ),
    "garbage state file": Case(
        _garbage_state, ("state file {work}/state.db", "not a coalmine state file", "not SQLite")
    ),
    "truncated state file": Case(
        _truncated_state, ("state file {work}/state.db", "not a coalmine state file", "damaged")
    ),
    "state file of something else": Case(
        _foreign_sqlite_state,
        ("state file {work}/state.db", "not a coalmine state file", "invoices"),
    ),
    "state path is a directory": Case(
        _state_is_a_directory, ("state file {work}/state.db", "is a directory")
    ),
}


def _snapshot(path: Path) -> bytes | str | None:
    if path.is_dir():
        return "directory:" + ",".join(sorted(entry.name for entry in path.iterdir()))
    return path.read_bytes() if path.exists() else None


def _environment(work: Path, settings: dict[str, str]) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COALMINE_", "LANGFUSE_"))
    }
    environment.update(
        LANGFUSE_PUBLIC_KEY="pk-lf-setup",
        LANGFUSE_SECRET_KEY="sk-lf-setup",
        LANGFUSE_BASE_URL="http://127.0.0.1:9",
        PYTHONPATH=str(REPO),
        **settings,
    )
    return environment


def _use_environment(monkeypatch: pytest.MonkeyPatch, work: Path, case: Case) -> None:
    """This process's environment as ``case`` arranges it in ``work``, and nothing else of
    coalmine's or Langfuse's."""
    for variable in list(os.environ):
        if variable.startswith(("COALMINE_", "LANGFUSE_")):
            monkeypatch.delenv(variable)
    for variable, value in _environment(work, case.arrange(work)).items():
        monkeypatch.setenv(variable, value)


def _check(case: Case, work: Path, code: int, stderr: str, before: bytes | str | None) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("coalmine: ")
    assert WEAK not in lines[0]
    for piece in case.says:
        assert piece.format(work=work) in lines[0]
    assert _snapshot(work / "state.db") == before


@pytest.mark.parametrize("name", list(CASES))
def test_run_refuses_a_bad_setup_with_one_line(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    shutil.copy(EXAMPLES / "agent-canary.yaml", tmp_path / "agent-canary.yaml")
    settings = case.arrange(tmp_path)
    before = _snapshot(tmp_path / "state.db")
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "coalmine.cli",
            "run",
            "--policy",
            str(tmp_path / "agent-canary.yaml"),
            "--state",
            str(tmp_path / "state.db"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        cwd=tmp_path,
        env=_environment(tmp_path, settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    _check(case, tmp_path, finished.returncode, finished.stderr, before)


@pytest.mark.parametrize("name", list(CASES))
def test_controller_refuses_a_bad_setup_with_one_line(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name]
    _use_environment(monkeypatch, tmp_path, case)
    before = _snapshot(tmp_path / "state.db")
    code = main(
        [
            "controller",
            "--policy",
            str(EXAMPLES / "prompt-canary.yaml"),
            "--state",
            str(tmp_path / "state.db"),
            "--admin-listen",
            "127.0.0.1:0",
        ]
    )
    _check(case, tmp_path, code, capsys.readouterr().err, before)


@pytest.mark.parametrize("name", ["short token", "placeholder token file"])
def test_proxy_refuses_a_weak_admin_token_with_one_line(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name]
    _use_environment(monkeypatch, tmp_path, case)
    code = main(
        [
            "proxy",
            "--policy",
            str(EXAMPLES / "agent-canary.yaml"),
            "--listen",
            "127.0.0.1:0",
        ]
    )
    _check(case, tmp_path, code, capsys.readouterr().err, None)


@pytest.mark.parametrize("name", ["garbage state file", "truncated state file"])
def test_state_store_raises_a_typed_error_and_leaves_the_file(name: str, tmp_path: Path) -> None:
    CASES[name].arrange(tmp_path)
    path = tmp_path / "state.db"
    before = path.read_bytes()
    with pytest.raises(StateFileError, match="not a coalmine state file"):
        ControllerState(path)
    with pytest.raises(StateFileError):  # not StateLockedError: the lock was given back
        ControllerState(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("name", ["garbage state file", "truncated state file"])
def test_routing_store_raises_a_typed_error_and_leaves_the_file(
    name: str, readonly: bool, tmp_path: Path
) -> None:
    CASES[name].arrange(tmp_path)
    path = tmp_path / "state.db"
    before = path.read_bytes()
    store = SqliteRoutingStore(path, readonly=readonly)
    with pytest.raises(BadStoreFileError, match="not a SQLite state file"):
        store.versions()
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("garbage state file", "not a SQLite state file, or damaged"),
        ("truncated state file", "not a SQLite state file, or damaged"),
        ("state path is a directory", "is a directory"),
    ],
)
def test_proxy_refuses_a_state_file_that_is_not_coalmines_with_one_line(
    name: str,
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name]
    _use_environment(monkeypatch, tmp_path, case)
    monkeypatch.setenv("COALMINE_ADMIN_TOKEN", "0123456789abcdef" * 3)
    before = _snapshot(tmp_path / "state.db")
    code = main(
        [
            "proxy",
            "--policy",
            str(EXAMPLES / "agent-canary.yaml"),
            "--state",
            str(tmp_path / "state.db"),
            "--listen",
            "127.0.0.1:0",
            "--no-spans",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"coalmine: state file {tmp_path / 'state.db'}")
    assert says in line
    assert _snapshot(tmp_path / "state.db") == before


def test_a_weak_analysis_token_is_refused_without_repeating_it() -> None:
    from controller.errors import SetupError  # noqa: PLC0415
    from controller.service import analysis_token  # noqa: PLC0415
    from controller.settings import ControllerSettings  # noqa: PLC0415

    assert analysis_token(ControllerSettings()) is None
    strong = "0123456789abcdef0123456789abcdef"
    assert analysis_token(ControllerSettings(analysis_token=strong)) == strong
    with pytest.raises(SetupError) as refused:
        analysis_token(ControllerSettings(analysis_token="short-token"))
    assert "COALMINE_ANALYSIS_TOKEN" in str(refused.value)
    assert "short-token" not in str(refused.value)
