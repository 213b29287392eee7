"""A policy file that could never be loaded safely is refused, located and counted, and
never stops the other files: numbers past Python's digit limit, deep nesting, alias
expansion ("billion laughs"), and files or scalars too large. Through the loader,
through ``PolicyFiles.reload`` and through a controller tick over two files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import Policy, PolicyError, load_policy, load_policy_text
from policies.limits import (
    MAX_ALIASES,
    MAX_ANCHORS,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NUMBER_DIGITS,
    MAX_SCALAR_CHARS,
    MAX_VALUES,
)
from policies.loader import load_policy_bytes
from policies.policy_files import PolicyFiles
from tests.policies.test_policy_files import Service, policy_text, write

FILE = "release.yaml"

# A good policy; the cases below append a field or replace one line (line numbers matter).
GOOD = policy_text("alpha")
GOOD_LINES = GOOD.splitlines(keepends=True)
WEIGHT_LINE = 8  # "  - {weight: 10, minDuration: 30m}"
assert GOOD_LINES[WEIGHT_LINE - 1].startswith("  - {weight: 10")


def with_line(number: int, text: str) -> str:
    """GOOD with line `number` (1-based) replaced by `text`."""
    return "".join(GOOD_LINES[: number - 1]) + text + "\n" + "".join(GOOD_LINES[number:])


def refused(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, FILE)
    return caught.value


def huge_number() -> str:
    """An integer past Python's limit for converting strings to ints (4300 digits)."""
    return with_line(WEIGHT_LINE, "  - {weight: " + "9" * 5000 + ", minDuration: 30m}")


def deep_nesting(levels: int = 3000) -> str:
    """Flow lists nested past the interpreter's recursion limit."""
    return with_line(WEIGHT_LINE, "  - {weight: " + "[" * levels + "]" * levels + "}")


def laughs(levels: int = 9, width: int = 10) -> str:
    """Each level repeats the one before `width` times: width**levels values in all,
    from levels*width aliases (within the alias limit)."""
    lines = ["lol0: &lol0 ha"]
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*lol{level - 1}"] * width)
        lines.append(f"lol{level}: &lol{level} [{aliases}]")
    return GOOD + "".join(f"x-{line}\n" for line in lines)


# ------------------------------------------------------------------------------ loader


def test_a_number_past_pythons_digit_limit_is_refused_with_its_line() -> None:
    error = refused(huge_number())
    [issue] = error.issues
    assert (issue.file, issue.line, issue.column) == (FILE, WEIGHT_LINE, 14)
    assert f"more than {MAX_SCALAR_CHARS} characters" in issue.message


def test_a_number_of_more_digits_than_the_limit_is_refused_with_its_line() -> None:
    digits = "9" * (MAX_NUMBER_DIGITS + 1)
    error = refused(with_line(WEIGHT_LINE, "  - {weight: " + digits + ", minDuration: 30m}"))
    [issue] = error.issues
    assert (issue.file, issue.line, issue.column) == (FILE, WEIGHT_LINE, 14)
    assert f"at most {MAX_NUMBER_DIGITS} digits" in issue.message


def test_a_number_just_within_the_digit_limit_is_read() -> None:
    error = refused(with_line(WEIGHT_LINE, "  - {weight: " + "9" * MAX_NUMBER_DIGITS + "}"))
    [issue] = error.issues
    assert issue.message == "must be <= 100"  # read as a number, then validated


def test_nesting_deeper_than_the_limit_is_refused_with_its_line() -> None:
    error = refused(deep_nesting())
    [issue] = error.issues
    assert issue.line == WEIGHT_LINE
    assert f"nested more than {MAX_DEPTH} levels deep" in issue.message


def test_nesting_through_aliases_is_bounded_too() -> None:
    # Each alias is only two levels deep where it is written, but stands for all the
    # levels before it.
    lines = ["x-n0: &n0 [leaf]"] + [f"x-n{i}: &n{i} [[*n{i - 1}]]" for i in range(1, 60)]
    error = refused(GOOD + "\n".join(lines) + "\n")
    assert any(f"nested more than {MAX_DEPTH} levels deep" in i.message for i in error.issues)


def test_alias_expansion_is_refused_before_it_grows() -> None:
    error = refused(laughs())
    [issue] = error.issues
    assert issue.file == FILE and issue.line > len(GOOD_LINES)
    assert f"more than {MAX_VALUES} values" in issue.message


def test_too_many_aliases_are_refused_at_the_first_one_over() -> None:
    aliases = ", ".join(["*one"] * (MAX_ALIASES + 1))
    error = refused(GOOD + f"x-one: &one 1\nx-many: [{aliases}]\n")
    [issue] = error.issues
    assert issue.line == len(GOOD_LINES) + 2
    assert f"more than {MAX_ALIASES} aliases" in issue.message


def test_too_many_anchors_are_refused() -> None:
    anchors = "".join(f"x-a{i}: &a{i} {i}\n" for i in range(MAX_ANCHORS + 1))
    error = refused(GOOD + anchors)
    [issue] = error.issues
    assert issue.line == len(GOOD_LINES) + MAX_ANCHORS + 1
    assert f"more than {MAX_ANCHORS} anchors" in issue.message


def test_a_scalar_too_long_is_refused() -> None:
    error = refused(GOOD + "x-long: " + "a" * (MAX_SCALAR_CHARS + 1) + "\n")
    [issue] = error.issues
    assert issue.line == len(GOOD_LINES) + 1
    assert f"more than {MAX_SCALAR_CHARS} characters" in issue.message


def test_a_file_too_large_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(GOOD + "#" * MAX_FILE_BYTES + "\n", encoding="utf-8")
    with pytest.raises(PolicyError) as from_file:
        load_policy(path)
    with pytest.raises(PolicyError) as from_text:
        load_policy_text(path.read_text(encoding="utf-8"), FILE)
    for caught in (from_file, from_text):
        [issue] = caught.value.issues
        assert issue.line == 1
        assert "larger than 1 MiB" in issue.message


def test_anchors_and_aliases_within_the_limits_still_load() -> None:
    text = GOOD.replace(
        "  - {weight: 10, minDuration: 30m}", "  - &step {weight: 10, minDuration: 30m}"
    )
    text = text.replace("  - {weight: 50, minDuration: 30m}", "  - {<<: *step, weight: 50}")
    assert text.count("*step") == 1
    policy = load_policy_text(text, FILE)
    assert [(step.weight, step.min_duration) for step in policy.steps] == [(10, 1800), (50, 1800)]


def test_a_value_the_constructor_cannot_read_is_located() -> None:
    error = refused(with_line(WEIGHT_LINE, "  - {weight: !!int nope, minDuration: 30m}"))
    issue = error.issues[0]
    assert (issue.line, issue.column, issue.path) == (WEIGHT_LINE, 14, "steps[0].weight")
    assert issue.message.startswith("cannot read this value: invalid literal for int()")


# ------------------------------------------------------------------------ PolicyFiles


def test_each_unloadable_file_is_its_own_counted_problem(tmp_path: Path) -> None:
    write(tmp_path / "a-good.yaml", policy_text("alpha"))
    number = write(tmp_path / "b-number.yaml", huge_number())
    deep = write(tmp_path / "c-deep.yaml", deep_nesting())
    laugh = write(tmp_path / "d-laughs.yaml", laughs())
    write(tmp_path / "e-good.yaml", policy_text("beta"))
    files = PolicyFiles([tmp_path])

    assert sorted(files.reload()) == ["alpha", "beta"]

    problems = {problem.path: problem.message for problem in files.problems}
    assert sorted(problems) == [str(number), str(deep), str(laugh)]
    assert problems[str(number)].startswith(f"{number}:{WEIGHT_LINE}:14: ")
    assert problems[str(deep)].startswith(f"{deep}:{WEIGHT_LINE}:")
    assert files.load_errors == 3
    files.reload()  # unchanged: reported again, not counted again
    assert files.load_errors == 3 and len(files.problems) == 3


def test_an_unexpected_failure_is_that_files_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "alpha.yaml", policy_text("alpha"))
    odd = write(tmp_path / "odd.yaml", policy_text("odd"))

    def load(data: bytes, filename: str) -> Policy:
        if filename == str(odd):
            raise RuntimeError("the loader broke")
        return load_policy_bytes(data, filename)

    monkeypatch.setattr("policies.policy_files.load_policy_bytes", load)
    files = PolicyFiles([tmp_path])

    assert sorted(files.reload()) == ["alpha"]
    [problem] = files.problems
    assert problem.path == str(odd)
    assert problem.message == f"{odd}:1:1: <document>: cannot load: RuntimeError: the loader broke"
    assert files.load_errors == 1


def test_an_oversized_file_is_counted_once_while_unchanged(tmp_path: Path) -> None:
    big = write(tmp_path / "big.yaml", policy_text("alpha") + "#" * MAX_FILE_BYTES + "\n")
    files = PolicyFiles([tmp_path])
    assert files.reload() == {}
    assert files.reload() == {}
    [problem] = files.problems
    assert problem.path == str(big) and "larger than 1 MiB" in problem.message
    assert files.load_errors == 1


# ------------------------------------------------------------------ through the controller


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(tmp_path)
    yield running
    running.close()


@pytest.mark.parametrize("bad", [huge_number, deep_nesting, laughs], ids=lambda f: f.__name__)
def test_one_bad_file_does_not_stop_the_other_release(service: Service, bad: object) -> None:
    assert callable(bad)
    write(service.folder / "a-bad.yaml", bad().replace("alpha", "other"))
    write(service.folder / "support.yaml", policy_text("support"))

    service.tick(3)

    assert service.service.policy_files.load_errors == 1
    registry = service.service.metrics.registry
    assert registry.get_sample_value("coalmine_policy_load_errors_total") == 1.0
    assert set(service.service.current_policies()) == {"support"}
    assert sum(service.traffic.request_counts.values()) >= 1  # the release was polled
    assert service.weight() == 10.0
    [problem] = service.service.policy_files.problems
    assert problem.path == str(service.folder / "a-bad.yaml")
