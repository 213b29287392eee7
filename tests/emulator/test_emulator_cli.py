"""`coalmine langfuse-emulator`: help, bad flags, and a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coalmine.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["langfuse-emulator", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--host",
        "--port",
        "--public-key",
        "--secret-key",
        "--db",
        "--plan",
        "--max-mb",
        "--fault",
    ):
        assert option in out


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--port", "70000"], "--port: 70000 is not a port number (0-65535)"),
        (["--port", "-1"], "--port: -1 is not a port number (0-65535)"),
        (["--plan", "free"], "--plan: 'free' is not one of hobby, core, pro"),
        (["--public-key", "pk-lf-x"], "--public-key and --secret-key go together"),
        (["--max-mb", "0"], "--max-mb: 0 must be above 0"),
        (["--db", "/nonexistent/dir/x.db"], "--db: /nonexistent/dir is not a directory"),
        (["--fault", "GET:/api=status:200"], "--fault: 'GET:/api=status:200': status '200'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert main(["langfuse-emulator", "--port", "0", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"coalmine: {reason}")


def test_a_taken_port_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["langfuse-emulator", "--port", str(port)]) == 2
    assert "address already in use" in capsys.readouterr().err


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coalmine.cli",
            "langfuse-emulator",
            "--port",
            "0",
            "--public-key",
            "pk-lf-cli",
            "--secret-key",
            "sk-lf-cli",
            "--db",
            str(tmp_path / "cli.db"),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    try:
        banner = [process.stdout.readline() for _ in range(4)]
        yield process, banner
    finally:
        process.terminate()
        process.communicate(timeout=10)


@pytest.mark.slow
def test_the_server_runs_as_a_process(server: tuple[subprocess.Popen[str], list[str]]) -> None:
    process, banner = server
    assert banner[0].startswith("Langfuse emulator on http://127.0.0.1:")
    base_url = banner[1].strip().removeprefix("LANGFUSE_BASE_URL=")
    assert banner[2].strip() == "LANGFUSE_PUBLIC_KEY=pk-lf-cli"
    assert banner[3].strip() == "LANGFUSE_SECRET_KEY=sk-lf-cli"
    with httpx.Client(base_url=base_url, timeout=10) as http:
        assert http.get("/api/public/health").json()["status"] == "OK"
        keyed = http.get("/api/public/v2/prompts", auth=("pk-lf-cli", "sk-lf-cli"))
        assert keyed.status_code == 200
    process.terminate()
    assert process.wait(timeout=10) in (0, -15)
