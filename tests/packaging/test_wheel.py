"""What coalmine ships: the wheel `pip wheel .` builds from this repository holds the four
packages and their data, nothing of the tests, the sandbox or the fakes; the Dockerfile
copies the same four packages into its build."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from tests.docker.dockerfile import parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"coalmine", "controller", "policies", "proxy"}
PROJECT_FILES = {"pyproject.toml", "README.md"}

# Paths no wheel may hold, as path segments.
NEVER_SHIPPED = {"tests", "sandbox", "kube_api", "fakes", "bench", "conftest.py"}

# What the image and `pip install coalmine` need beyond the controller and the proxy.
REQUIRED = [
    "coalmine/emulator/__init__.py",
    "coalmine/emulator/app.py",
    "coalmine/demo/agent/__init__.py",
    "coalmine/demo/agent/app.py",
    "coalmine/demo/evaluator.py",
    "policies/schema.json",
    "policies/examples/prompt-canary.yaml",
    "controller/dashboard_assets/index.html",
    "controller/dashboard_assets/dashboard.js",
    "controller/dashboard_assets/dashboard.css",
]

install = pytest.mark.install


def _left_behind(directory: str, names: list[str]) -> set[str]:
    """What the copy of the repository leaves out: caches everywhere, and at the root the
    dot-directories (the checkout, the virtual environment) and earlier build output."""
    at_root = Path(directory) == ROOT
    return {
        name
        for name in names
        if name == "__pycache__"
        or (
            at_root
            and (name.startswith(".") or name in {"build", "dist"} or name.endswith(".egg-info"))
        )
    }


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The file names in the wheel built from a copy of the repository (setuptools writes
    build/ and the egg-info next to the sources: into the copy, not the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_left_behind)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "out"), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (work / "out").glob("coalmine-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return [name for name in archive.namelist() if not name.endswith("/")]


def top_level(name: str) -> str:
    return name.split("/", 1)[0]


@install
def test_the_wheel_holds_the_four_packages_and_its_metadata(
    wheel_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    counts = Counter(top_level(name) for name in wheel_files)
    with capsys.disabled():
        print(f"\nwheel: {len(wheel_files)} files")
        for package, count in sorted(counts.items()):
            print(f"  {package:32} {count:4}")
    (dist_info,) = [package for package in counts if package.endswith(".dist-info")]
    assert dist_info.startswith("coalmine-")
    assert set(counts) - {dist_info} == PACKAGES


@install
def test_nothing_of_the_tests_the_sandbox_or_the_fakes_is_shipped(wheel_files: list[str]) -> None:
    shipped = [name for name in wheel_files if NEVER_SHIPPED & set(name.split("/"))]
    assert shipped == []


@install
@pytest.mark.parametrize("path", REQUIRED)
def test_the_wheel_ships(wheel_files: list[str], path: str) -> None:
    assert path in wheel_files


@install
@pytest.mark.parametrize(
    ("folder", "pattern"),
    [
        ("policies/examples", "*.yaml"),
        ("controller/dashboard_assets", "*"),
        ("coalmine/emulator", "*.py"),
        ("coalmine/demo", "**/*.py"),
        ("proxy", "**/*.py"),
        ("controller", "**/*.py"),
    ],
)
def test_every_file_of_the_folder_is_shipped(
    wheel_files: list[str], folder: str, pattern: str
) -> None:
    in_repository = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / folder).glob(pattern)
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert in_repository, f"nothing matches {folder}/{pattern}"
    assert in_repository - set(wheel_files) == set()


def test_the_dockerfile_copies_the_four_packages_and_the_project_files() -> None:
    stages = parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert not [i for stage in stages for i in stage.all("ADD")]
    from_context: set[str] = set()
    for stage in stages:
        for copy in stage.all("COPY"):
            flags, (*sources, target) = copy.flags_and_words()
            if "from" in flags:
                continue  # from another stage, not from the build context
            from_context.update(sources)
            packages = set(sources) & PACKAGES
            if packages:
                # each package lands under its own name, where `pip install .` finds it
                assert sources == [target.removeprefix("./")], f"line {copy.line}"
    assert from_context == PACKAGES | PROJECT_FILES
