"""`coalmine replay` on bad input: exit 2, one line on stderr naming file and line, no output."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from bench.streams import SCENARIOS, generate
from tests.replay.replay_support import ONE_STEP, Run

Coalmine = Callable[..., Run]
Write = Callable[[str, str | Iterable[str]], Path]

TS = '"ts": "2026-11-22T10:00:30Z"'
GOOD = [
    '{"ts": "2026-11-22T10:00:00Z", "arm": "baseline", "trace_id": "b-1", "error": false, '
    '"latency_ms": 700, "cost_usd": 0.002, "scores": {"helpfulness": 0.8}}',
    '{"ts": "2026-11-22T10:00:10Z", "arm": "canary", "trace_id": "c-1", "error": false, '
    '"latency_ms": 650.5, "cost_usd": 0.0021}',
]
TOO_BIG = "1" * 400  # a JSON integer beyond the range of a float
TOO_LONG = "1" * 5000  # beyond the digits Python converts

BAD_LINES = {
    "invalid JSON": (  # the value is missing at the end of the 60-character line
        f'{{{TS}, "arm": "canary", "trace_id": ',
        "not valid JSON (Expecting value at column 60)",
    ),
    "trailing garbage": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2"}} x',
        "not valid JSON (Extra data at column 68)",
    ),
    "array": (f'[{{{TS}, "arm": "canary", "trace_id": "c-2"}}]', "must be a JSON object"),
    "string": ('"c-2"', "must be a JSON object"),
    "missing ts": ('{"arm": "canary", "trace_id": "c-2"}', "ts: must be an ISO 8601 string"),
    "numeric ts": (
        '{"ts": 1795428030, "arm": "canary", "trace_id": "c-2"}',
        "ts: must be an ISO 8601 string",
    ),
    "bad ts": (
        '{"ts": "yesterday", "arm": "canary", "trace_id": "c-2"}',
        "ts: 'yesterday' is not an ISO 8601 timestamp",
    ),
    "missing trace_id": (f'{{{TS}, "arm": "canary"}}', "trace_id: must be a non-empty string"),
    "empty trace_id": (
        f'{{{TS}, "arm": "canary", "trace_id": ""}}',
        "trace_id: must be a non-empty string",
    ),
    "unknown arm": (
        f'{{{TS}, "arm": "control", "trace_id": "c-2"}}',
        "arm: 'control' is not one of baseline, canary, shadow",
    ),
    "null arm": (
        f'{{{TS}, "arm": null, "trace_id": "c-2", "scores": {{"helpfulness": 1}}}}',
        "arm: must be baseline, canary or shadow",
    ),
    "error not boolean": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "error": "no"}}',
        "error: must be true or false",
    ),
    "error as a number": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "error": 0}}',
        "error: must be true or false",
    ),
    "negative latency": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "latency_ms": -1}}',
        "latency_ms: must be a finite number >= 0",
    ),
    "latency as a string": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "latency_ms": "800"}}',
        "latency_ms: must be a number",
    ),
    "NaN cost": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "cost_usd": NaN}}',
        "cost_usd: must be a finite number >= 0",
    ),
    "infinite cost": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "cost_usd": Infinity}}',
        "cost_usd: must be a finite number >= 0",
    ),
    "cost too big for a float": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "cost_usd": {TOO_BIG}}}',
        "cost_usd: must be a finite number >= 0",
    ),
    "number too long to read": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "latency_ms": {TOO_LONG}}}',
        "not valid JSON (a number too long to read)",
    ),
    "scores not an object": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "scores": [0.5]}}',
        "scores: must be an object of name to value",
    ),
    "score null": (
        f'{{{TS}, "arm": "canary", "trace_id": "c-2", "scores": {{"helpfulness": null}}}}',
        "scores.helpfulness: must be a number, true/false or a string",
    ),
    "score NaN": (
        f'{{{TS}, "trace_id": "c-1", "scores": {{"helpfulness": NaN}}}}',
        "scores.helpfulness: must be a number, true/false or a string",
    ),
    "score too big for a float": (
        f'{{{TS}, "trace_id": "c-1", "scores": {{"helpfulness": {TOO_BIG}}}}}',
        "scores.helpfulness: must be a number, true/false or a string",
    ),
    "score name with a line break": (
        f'{{{TS}, "trace_id": "c-1", "scores": {{"a\\nb": {{}}}}}}',
        "scores.'a\\nb': must be a number, true/false or a string",
    ),
    "late score without scores": (
        f'{{{TS}, "trace_id": "c-1"}}',
        "a line without arm must carry scores",
    ),
    "late score with no score in it": (
        f'{{{TS}, "trace_id": "c-1", "scores": {{}}}}',
        "a line without arm must carry scores",
    ),
}


def assert_bad_input(run: Run, reason: str) -> None:
    assert run.code == 2
    assert run.out == ""
    assert run.err == f"coalmine: {reason}\n"


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_malformed_line(case: str, coalmine: Coalmine, write: Write, one_step: Path) -> None:
    line, message = BAD_LINES[case]
    stream = write("stream.jsonl", [*GOOD, line, *GOOD])
    for as_json in ((), ("--json",)):
        run = coalmine("replay", "--policy", one_step, "--samples", stream, *as_json)
        assert_bad_input(run, f"{stream}:3: {message}")


def test_line_numbers_count_blank_lines(coalmine: Coalmine, write: Write, one_step: Path) -> None:
    stream = write("stream.jsonl", ["", GOOD[0], "   ", "\t", GOOD[1], "[]"])
    run = coalmine("replay", "--policy", one_step, "--samples", stream)
    assert_bad_input(run, f"{stream}:6: must be a JSON object")


def test_a_bad_line_after_the_decision_is_still_an_error(
    coalmine: Coalmine, write: Write, one_step: Path
) -> None:
    lines = [*generate(SCENARIOS["bad"], 60, seed=7), "{"]
    stream = write("stream.jsonl", lines)
    run = coalmine("replay", "--policy", one_step, "--samples", stream, "--json")
    assert_bad_input(
        run,
        f"{stream}:{len(lines)}: not valid JSON (Expecting property name enclosed in "
        "double quotes at column 2)",
    )


def test_bytes_that_are_not_utf8_are_reported_on_their_line(
    coalmine: Coalmine, tmp_path: Path, one_step: Path
) -> None:
    good = list(generate(SCENARIOS["neutral"], 2, seed=1))
    assert len(good) > 200  # more than the first chunk a text reader decodes
    stream = tmp_path / "stream.jsonl"
    body = "".join(f"{line}\n" for line in good).encode()
    bad = b'{"ts": "2026-11-22T10:03:00Z", "arm": "canary", "trace_id": "\xff"}\n'
    stream.write_bytes(body + bad + body)
    run = coalmine("replay", "--policy", one_step, "--samples", stream)
    assert_bad_input(run, f"{stream}:{len(good) + 1}: not UTF-8 text")


def test_missing_samples_file(coalmine: Coalmine, tmp_path: Path, one_step: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    run = coalmine("replay", "--policy", one_step, "--samples", missing, "--json")
    assert_bad_input(run, f"{missing}: cannot read (No such file or directory)")


def test_samples_path_is_a_directory(coalmine: Coalmine, tmp_path: Path, one_step: Path) -> None:
    run = coalmine("replay", "--policy", one_step, "--samples", tmp_path)
    assert_bad_input(run, f"{tmp_path}: cannot read (Is a directory)")


@pytest.mark.parametrize("content", ["", "\n", "  \n\n\t\n"], ids=["empty", "newline", "blank"])
def test_stream_without_samples(
    content: str, coalmine: Coalmine, write: Write, one_step: Path
) -> None:
    stream = write("empty.jsonl", content)
    run = coalmine("replay", "--policy", one_step, "--samples", stream, "--json")
    assert_bad_input(run, f"{stream}: no samples")


def test_bad_policy(coalmine: Coalmine, write: Write) -> None:
    text = ONE_STEP.replace("tolerance: 0.005", "tolerance: -0.005")
    policy = write("bad.yaml", text)
    stream = write("stream.jsonl", GOOD)
    line_number, line = next(
        (number, line) for number, line in enumerate(text.splitlines(), start=1) if "-0.005" in line
    )
    column = line.index("-0.005") + 1
    run = coalmine("replay", "--policy", policy, "--samples", stream, "--json")
    assert_bad_input(
        run, f"{policy}:{line_number}:{column}: analysis.metrics[1].tolerance: must be >= 0"
    )


def test_missing_policy(coalmine: Coalmine, write: Write, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    run = coalmine("replay", "--policy", missing, "--samples", write("s.jsonl", GOOD))
    assert_bad_input(run, f"{missing}:1:1: <document>: file not found")


@pytest.mark.parametrize(
    ("interval", "reason"),
    [
        ("0s", "--interval: must be longer than zero"),
        ("0ms", "--interval: must be longer than zero"),
        ("30", "--interval: must be a duration such as 250ms, 30s, 10m, 2h or 1h30m"),
        ("-30s", "--interval: must be a duration such as 250ms, 30s, 10m, 2h or 1h30m"),
    ],
)
def test_bad_interval(
    interval: str, reason: str, coalmine: Coalmine, write: Write, one_step: Path
) -> None:
    stream = write("s.jsonl", GOOD)
    run = coalmine(
        "replay", "--policy", one_step, "--samples", stream, "--interval", interval, "--json"
    )
    assert_bad_input(run, reason)


def test_unknown_keys_and_blank_lines_are_ignored(
    coalmine: Coalmine, write: Write, one_step: Path
) -> None:
    plain = [*generate(SCENARIOS["neutral"], 10, seed=3)]
    noisy: list[str] = []
    for number, line in enumerate(plain):
        extra = f'"model": "gpt-x", "tags": ["a", {{"b": null}}], "n": {number}, '
        noisy.append("{" + extra + line[1:])
        if number % 50 == 0:
            noisy.append("   " if number % 100 else "")
    expected = coalmine(
        "replay", "--policy", one_step, "--samples", write("plain.jsonl", plain), "--json"
    )
    run = coalmine(
        "replay", "--policy", one_step, "--samples", write("noisy.jsonl", noisy), "--json"
    )
    assert run.code == 0, run.err
    assert run.events == expected.events
    summary, plain_summary = run.summary, expected.summary
    assert summary["lines"] == len(noisy) > len(plain) == plain_summary["lines"]
    del summary["lines"], plain_summary["lines"]
    assert summary == plain_summary


def test_out_of_order_lines_are_applied_and_counted(
    coalmine: Coalmine, write: Write, one_step: Path
) -> None:
    lines = [
        '{"ts": "2026-11-22T10:00:00Z", "arm": "baseline", "trace_id": "b-1", "error": false}',
        '{"ts": "2026-11-22T10:00:40Z", "arm": "canary", "trace_id": "c-1", "error": false}',
        # older than the line before it
        '{"ts": "2026-11-22T10:00:20Z", "arm": "baseline", "trace_id": "b-2", "error": true}',
        '{"ts": "2026-11-22T10:02:10Z", "arm": "baseline", "trace_id": "b-3", "error": false}',
        # older than the look at 10:02, made before this line was read
        '{"ts": "2026-11-22T10:01:50Z", "arm": "canary", "trace_id": "c-2", "error": false}',
        '{"ts": "2026-11-22T10:01:55Z", "trace_id": "c-1", "scores": {"helpfulness": 0.5}}',
        '{"ts": "2026-11-22T10:02:30Z", "arm": "baseline", "trace_id": "b-4", "error": false}',
    ]
    run = coalmine("replay", "--policy", one_step, "--samples", write("s.jsonl", lines), "--json")
    assert run.code == 0, run.err
    summary = run.summary
    assert summary["out_of_order_lines"] == 3
    assert summary["traces"] == {"baseline": 4, "canary": 2}
    assert summary["late_score_lines"] == 1
    assert summary["looks"] == 3  # 10:01, 10:02 and the last one at 10:03
    assert summary["outcome"] == "running"
