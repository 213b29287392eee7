"""Policies valid one by one but not together: the checks of ``check_policy_set``, and the
same refusal, word for word, from ``coalmine policy validate`` (files or a directory),
``coalmine run`` and ``coalmine proxy``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coalmine.cli import main
from policies import Policy
from policies.policy_set import SetProblem, check_policy_set, policy_files_in


def policy(
    name: str,
    *,
    prefix: str | None = None,
    prompt: str | None = None,
    upstream: bool = True,
) -> Policy:
    target: dict[str, Any] = {}
    if prompt is not None:
        target["prompt"] = {"name": prompt}
    if upstream:
        target["upstreams"] = {"stable": "http://127.0.0.1:9"}
    document: dict[str, Any] = {
        "apiVersion": "coalmine/v1",
        "kind": "Release",
        "name": name,
        "target": target,
        "steps": [{"weight": 10}],
        "analysis": {"metrics": [{"name": "errors", "source": "error_rate", "tolerance": 0.01}]},
    }
    if prefix is not None:
        document["routing"] = {"pathPrefix": prefix}
    return Policy.model_validate(document)


@dataclass(frozen=True)
class Case:
    policies: list[tuple[str, Policy]]
    expected: list[str]


CASES = {
    "one release": Case([("a.yaml", policy("a"))], []),
    "distinct prefixes and prompts": Case(
        [
            ("a.yaml", policy("a", prefix="/a", prompt="pa")),
            ("b.yaml", policy("b", prefix="/b", prompt="pb")),
            ("c.yaml", policy("c", prefix="/", prompt=None)),
        ],
        [],
    ),
    "nested prefixes are allowed (the longest wins)": Case(
        [("a.yaml", policy("a", prefix="/v1")), ("b.yaml", policy("b", prefix="/v1/chat"))], []
    ),
    "both on the default prefix": Case(
        [("a.yaml", policy("a")), ("b.yaml", policy("b"))],
        ["a.yaml and b.yaml: releases 'a' and 'b' both claim path prefix '/'"],
    ),
    "one prefix given explicitly twice": Case(
        [("x/a.yml", policy("a", prefix="/chat")), ("y/b.yml", policy("b", prefix="/chat"))],
        ["x/a.yml and y/b.yml: releases 'a' and 'b' both claim path prefix '/chat'"],
    ),
    "prompt-only releases claim their prefix too (the proxy routes them to the app)": Case(
        [
            ("a.yaml", policy("a", prompt="pa", upstream=False)),
            ("b.yaml", policy("b", prompt="pb", upstream=False)),
        ],
        ["a.yaml and b.yaml: releases 'a' and 'b' both claim path prefix '/'"],
    ),
    "one release in two files": Case(
        [("a.yaml", policy("same", prefix="/a")), ("b.yaml", policy("same", prefix="/b"))],
        ["a.yaml and b.yaml: release 'same' is given by two policy files"],
    ),
    "one file given twice": Case(
        [("a.yaml", policy("a")), ("a.yaml", policy("a"))],
        ["a.yaml and a.yaml: release 'a' is given by two policy files"],
    ),
    "two releases of one prompt": Case(
        [
            ("a.yaml", policy("a", prefix="/a", prompt="support")),
            ("b.yaml", policy("b", prefix="/b", prompt="support")),
        ],
        ["a.yaml and b.yaml: releases 'a' and 'b' both release prompt 'support'"],
    ),
    "two releases of one prompt without upstreams": Case(
        [
            ("a.yaml", policy("a", prefix="/a", prompt="support", upstream=False)),
            ("b.yaml", policy("b", prefix="/b", prompt="support", upstream=False)),
        ],
        ["a.yaml and b.yaml: releases 'a' and 'b' both release prompt 'support'"],
    ),
    "every clash of a third file with the first two": Case(
        [
            ("a.yaml", policy("a", prefix="/a", prompt="pa")),
            ("b.yaml", policy("b", prefix="/b", prompt="pb")),
            ("c.yaml", policy("c", prefix="/a", prompt="pb")),
        ],
        [
            "a.yaml and c.yaml: releases 'a' and 'c' both claim path prefix '/a'",
            "b.yaml and c.yaml: releases 'b' and 'c' both release prompt 'pb'",
        ],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_check_policy_set(case: Case) -> None:
    assert [str(problem) for problem in check_policy_set(case.policies)] == case.expected


def test_a_duplicate_is_marked_and_names_its_second_file() -> None:
    [problem] = check_policy_set([("a.yaml", policy("same")), ("b.yaml", policy("same"))])
    assert problem == SetProblem(
        "a.yaml", "b.yaml", "same", "release 'same' is given by two policy files", "release"
    )


def test_policy_files_in_a_directory(tmp_path: Path) -> None:
    for name in ("b.yml", "a.yaml", ".hidden.yaml", "notes.txt", "c.yaml.bak"):
        (tmp_path / name).write_text("", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text("", encoding="utf-8")
    assert policy_files_in(tmp_path) == [tmp_path / "a.yaml", tmp_path / "b.yml"]


# ----------------------------------------------------------------------------- commands

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: {name}
target:
  upstreams: {{stable: "http://127.0.0.1:9"}}
steps:
  - {{weight: 10}}
analysis:
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.01}}
"""


@pytest.fixture
def clashing(tmp_path: Path) -> tuple[Path, Path, str]:
    """Two valid files of releases on the default prefix, and the conflict they make."""
    folder = tmp_path / "policies"
    folder.mkdir()
    first = folder / "a.yaml"
    second = folder / "b.yaml"
    first.write_text(POLICY.format(name="alpha"), encoding="utf-8")
    second.write_text(POLICY.format(name="beta"), encoding="utf-8")
    message = f"{first} and {second}: releases 'alpha' and 'beta' both claim path prefix '/'"
    return first, second, message


def test_validate_files_refuses_a_clashing_set(
    clashing: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, message = clashing
    assert main(["policy", "validate", str(first), str(second)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"ok: {first} (release alpha, 1 step, 1 metric)",
        f"ok: {second} (release beta, 1 step, 1 metric)",
    ]
    assert err.splitlines() == [message, "coalmine: 1 conflict between policy files"]


def test_validate_directory_checks_its_files_as_one_set(
    clashing: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first, _, message = clashing
    assert main(["policy", "validate", str(first.parent)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        message,
        "coalmine: 1 conflict between policy files",
    ]


def test_validate_one_file_of_the_set_is_ok(
    clashing: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first, _, _ = clashing
    assert main(["policy", "validate", str(first)]) == 0
    assert capsys.readouterr().err == ""


def test_validate_an_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"coalmine: no policy files (*.yaml, *.yml) in {tmp_path}"
    ]


def test_run_refuses_the_set_with_the_message_of_validate(
    clashing: tuple[Path, Path, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
    first, _, message = clashing
    state = first.parent.parent / "state.db"
    assert main(["run", "--policy", str(first.parent), "--state", str(state)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"coalmine: --policy: {message}"]
    assert not state.exists()


def test_proxy_refuses_the_set_with_the_message_of_validate(
    clashing: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, message = clashing
    argv = ["proxy", "--policy", str(first), "--policy", str(second), "--no-spans"]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"coalmine: --policy: {message}"]


def test_proxy_refuses_two_releases_of_one_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for name, prefix in (("alpha", "/a"), ("beta", "/b")):
        text = (
            POLICY.format(name=name).replace("target:\n", "target:\n  prompt: {name: support}\n")
            + f"routing: {{pathPrefix: {prefix}}}\n"
        )
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(text, encoding="utf-8")
    message = (
        f"{files[0]} and {files[1]}: releases 'alpha' and 'beta' both release prompt 'support'"
    )
    assert main(["policy", "validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[0] == message
    argv = ["proxy", "--policy", str(files[0]), "--policy", str(files[1]), "--no-spans"]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"coalmine: --policy: {message}"]
