"""Fixtures for `coalmine replay`: policy and stream files, and the CLI run in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from coalmine.cli import main
from tests.replay.replay_support import ONE_STEP, THREE_STEPS, Run


@pytest.fixture
def coalmine(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run `coalmine ARGS...` in-process; return its exit status and output."""

    def run(*args: str | Path) -> Run:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | Iterable[str]], Path]:
    """Write a file under tmp_path: text as is, or lines joined with newlines."""

    def write_file(name: str, content: str | Iterable[str]) -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else "".join(f"{line}\n" for line in content)
        path.write_text(text, encoding="utf-8")
        return path

    return write_file


@pytest.fixture
def one_step(write: Callable[[str, str], Path]) -> Path:
    return write("one-step.yaml", ONE_STEP)


@pytest.fixture
def three_steps(write: Callable[[str, str], Path]) -> Path:
    return write("three-steps.yaml", THREE_STEPS)
