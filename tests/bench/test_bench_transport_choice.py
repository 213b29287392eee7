"""The transport benchmark compares like with like: every contender sends each kind of
request to the same upstream and reads the whole answer, byte for byte; and its verdict
follows the rule it states."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.machine import free_port
from bench.proxy_speed import upstream
from bench.transport_choice import (
    CONTENDERS,
    KIND,
    KINDS,
    REFERENCE,
    Report,
    RunResult,
    make_client,
    verdict,
)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    chosen = free_port()
    with upstream(tmp_path_factory.mktemp("upstream"), [chosen]):
        yield chosen


async def _sizes(name: str, port: int) -> dict[str, list[int]]:
    client = make_client(name, port, 4)
    try:
        sizes: dict[str, list[int]] = {}
        for kind in KINDS:
            answers = await asyncio.gather(*(client.call(KIND[kind]) for _ in range(6)))
            sizes[kind] = list(answers)
        return sizes
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("name", CONTENDERS)
def test_every_contender_reads_every_answer_whole(name: str, port: int) -> None:
    sizes = asyncio.run(_sizes(name, port))
    for kind in KINDS:
        assert sizes[kind] == [KIND[kind].expected_bytes] * 6, (name, kind)


def _run(contender: str, kind: str, cpu_us: float) -> RunResult:
    return RunResult(contender, kind, 1, 1000, 0, 1.0, cpu_us * 1000 / 1e6, [1.0])


def _report(cheapest_rival: float) -> Report:
    results = []
    for kind in KINDS:
        results.append(_run(REFERENCE, kind, 50.0))
        results.append(_run("aiohttp", kind, 50.0 * cheapest_rival))
        results.append(_run("httpx-client", kind, 500.0))
    return Report("command", results, "0 0 0", "0 0 0", 1.0, {})


def test_a_library_replaces_the_transport_only_when_it_ties_in_every_case() -> None:
    contenders = (REFERENCE, "aiohttp", "httpx-client")
    assert verdict(_report(1.3), contenders, KINDS).startswith("**Keep coalmine's")
    assert verdict(_report(1.05), contenders, KINDS).startswith(
        "**Replace coalmine's transport with aiohttp.**"
    )


def test_the_payloads_are_what_the_report_says() -> None:
    assert len(KIND["post"].body) >= 4096
    assert KIND["stream"].path.startswith("/sse?events=100")
