"""The Dockerfile, without a Docker engine: its instructions parsed and checked, the
builder stage's install steps carried out in a fresh virtual environment, and the
HEALTHCHECK command run against a local HTTP server."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.dockerfile import Instruction, Stage, parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    (found,) = [s for s in stages if s.name == "builder"]
    return found


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_the_parser_reads_continuations_and_stages() -> None:
    parsed = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nFROM a:1 AS one\nRUN x \\\n    # note\n    && y\n"
        'FROM b\nCMD ["p", "q"]\n'
    )
    assert [(s.base, s.name) for s in parsed] == [("a:1", "one"), ("b", None)]
    assert parsed[0].instructions == [Instruction("RUN", "x && y", 3)]
    assert parsed[1].last("CMD").exec_form == ["p", "q"]


# --- the final stage -----------------------------------------------------------------


def test_two_stages_on_the_same_slim_base(stages: list[Stage], builder: Stage) -> None:
    assert len(stages) == 2 and stages[0] is builder
    assert {s.base for s in stages} == {"python:3.12-slim"}


def test_the_final_stage_runs_as_a_numeric_non_root_user_before_its_entrypoint(
    final: Stage,
) -> None:
    user = final.last("USER")
    uid, _, gid = user.arguments.partition(":")
    assert uid.isdigit() and int(uid) != 0, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    assert (uid, gid) == ("10001", "10001")
    assert final.index(user) < final.index(final.last("ENTRYPOINT"))
    # The user exists in the image (uid and gid 10001, no login shell, no home).
    setup = " ".join(i.arguments for i in final.all("RUN"))
    assert "--uid 10001" in setup and "--gid 10001" in setup
    assert "nologin" in setup and "--no-create-home" in setup


def test_entrypoint_cmd_ports_and_environment(final: Stage) -> None:
    assert final.last("ENTRYPOINT").exec_form == ["coalmine", "run"]
    assert final.last("CMD").exec_form == ["--policy", "/etc/coalmine/policies"]
    assert final.last("EXPOSE").arguments.split() == ["8080", "9464", "9465"]
    env = " ".join(i.arguments for i in final.all("ENV"))
    for setting in ("PATH=/opt/venv/bin:$PATH", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert setting in env.split()


def test_the_final_stage_copies_only_the_venv_and_installs_nothing(final: Stage) -> None:
    assert not final.all("ADD")
    copies = [i.flags_and_words() for i in final.all("COPY")]
    assert copies == [({"from": "builder"}, ["/opt/venv", "/opt/venv"])]
    for run in final.all("RUN"):
        for tool in ("pip ", "apt-get", "apk ", "gcc", "build-essential", "curl", "wget"):
            assert tool not in run.arguments, f"line {run.line}: {tool.strip()} in the final stage"


def healthcheck_command(final: Stage) -> list[str]:
    flags, _ = final.last("HEALTHCHECK").flags_and_words()
    assert {"interval", "timeout", "retries"} <= set(flags)
    command = final.last("HEALTHCHECK").arguments.split(" CMD ", 1)[1]
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_the_healthcheck_calls_healthz_with_python(final: Stage) -> None:
    argv = healthcheck_command(final)
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request" in argv[2] and "http://127.0.0.1:9465/healthz" in argv[2]


# --- the HEALTHCHECK command, run ------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server(request: pytest.FixtureRequest) -> Iterator[int]:
    handler = type("Handler", (_Health,), {"status": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_healthcheck(final: Stage, port: int) -> int:
    argv = healthcheck_command(final)
    script = argv[2].replace("127.0.0.1:9465", f"127.0.0.1:{port}")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=30, check=False
    )
    return done.returncode


@pytest.mark.parametrize(
    ("health_server", "healthy"), [(200, True), (503, False)], indirect=["health_server"]
)
def test_the_healthcheck_follows_the_healthz_status(
    final: Stage, health_server: int, healthy: bool
) -> None:
    assert (run_healthcheck(final, health_server) == 0) is healthy


def test_the_healthcheck_fails_when_nothing_listens(final: Stage) -> None:
    assert run_healthcheck(final, free_port()) != 0


# --- the builder stage, carried out -----------------------------------------------------


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule for the patterns this project uses: a path is excluded when it or
    one of its parent directories matches (`**/` matches any depth)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        deep = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], deep):
                return True
    return False


def test_the_dockerignore_keeps_what_the_builder_copies(builder: Stage) -> None:
    patterns = ignore_patterns()
    for excluded in (
        ".git",
        ".venv",
        "tests",
        "coalmine/__pycache__/cli.cpython-312.pyc",
        "state.db",
    ):
        assert ignored(excluded, patterns), excluded
    for copy in builder.all("COPY"):
        _, words = copy.flags_and_words()
        for source in words[:-1]:
            assert not ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"


def copy_into(source: Path, destination: Path, patterns: list[str]) -> None:
    relative = source.relative_to(ROOT).as_posix()
    if ignored(relative, patterns):
        return
    if source.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        for child in sorted(source.iterdir()):
            copy_into(child, destination / child.name, patterns)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


@pytest.mark.install
def test_the_builder_installs_a_runnable_coalmine_without_dev_packages(
    builder: Stage, tmp_path: Path
) -> None:
    """Carries out the builder stage under tmp_path: `python -m venv /opt/venv` (here
    tmp_path/venv), WORKDIR, the COPY steps (with .dockerignore) and the `pip install`
    RUN, with the venv first on PATH as the stage's ENV says. The one change to the pip
    command line: `--no-cache-dir` is left out so that pip's local cache is reused."""
    runs = [i.arguments for i in builder.all("RUN")]
    assert runs == ["python -m venv /opt/venv", "pip install --no-cache-dir ."]
    assert "PATH=/opt/venv/bin:$PATH" in " ".join(i.arguments for i in builder.all("ENV"))
    workdir = Path(builder.last("WORKDIR").arguments)
    assert builder.index(builder.last("WORKDIR")) < builder.index(builder.all("COPY")[0])

    venv = tmp_path / "venv"
    context = tmp_path / "context" / workdir.relative_to("/")
    patterns = ignore_patterns()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    for copy in builder.all("COPY"):
        _, words = copy.flags_and_words()
        *sources, target = words
        for source in sources:
            name = Path(source).name if target.endswith("/") else ""
            copy_into(ROOT / source, context / target / name, patterns)

    pip = shlex.split(runs[1])
    assert pip[:2] == ["pip", "install"]
    command = [str(venv / "bin" / "pip"), *[w for w in pip[1:] if w != "--no-cache-dir"]]
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    installed = subprocess.run(
        command, cwd=context, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    for args in (["--help"], ["run", "--help"]):
        done = subprocess.run(
            [str(venv / "bin" / "coalmine"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "Usage" in done.stdout
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    packages = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"coalmine", "fastapi", "uvicorn", "kubernetes"} <= packages
    dev_only = {"pytest", "mypy", "ruff", "hypothesis", "import-linter", "langfuse", "selenium"}
    assert packages & dev_only == set()
