"""The application URL the proxy sends prompt-only releases to: a setting of its own
(``COALMINE_APP_URL``, ``--app-url`` on ``coalmine proxy`` and ``coalmine run``), checked
as policy upstreams are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coalmine.cli import main
from policies import EXAMPLES_DIR
from proxy.settings import ProxySettings

PROMPT_CANARY = EXAMPLES_DIR / "prompt-canary.yaml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("COALMINE_", "LANGFUSE_")):
            monkeypatch.delenv(name)


def test_the_default_is_uvicorns_port_on_loopback() -> None:
    assert ProxySettings().app_url == "http://127.0.0.1:8000"


def test_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COALMINE_APP_URL", "http://127.0.0.1:3000")
    assert ProxySettings().app_url == "http://127.0.0.1:3000"


@pytest.mark.parametrize("command", ["proxy", "run"])
@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8000", "127.0.0.1:8000", "http://"])
def test_a_bad_app_url_is_refused_with_one_line(
    command: str, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--policy", str(PROMPT_CANARY), "--app-url", url]
    if command == "run":
        argv += ["--state", str(tmp_path / "state.db")]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("coalmine: setting app_url: ")
    assert not (tmp_path / "state.db").exists()


def test_proxy_refuses_a_policy_path_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["proxy", "--policy", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"coalmine: --policy: {missing}: no such file or directory"
    )
