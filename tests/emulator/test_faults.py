"""Fault injection: 5xx, latency, held requests and garbled JSON, switched at run time."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from coalmine.emulator.faults import Fault, parse_fault
from coalmine.emulator.settings import EmulatorSettings
from tests.emulator.emulator_support import LiveEmulator, start_emulator

PROMPTS = "/api/public/v2/prompts"
FAULTS = "/emulator/faults"


def add(http: httpx.Client, **fault: Any) -> dict[str, Any]:
    response = http.post(FAULTS, json=fault)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_503_fault_switched_on_and_off(client: httpx.Client) -> None:
    assert client.get(PROMPTS).status_code == 200
    fault = add(client, spec="GET:/api/public/v2/prompts=status:503")
    assert fault["spec"] == "GET:/api/public/v2/prompts=status:503"
    failed = client.get(PROMPTS)
    assert failed.status_code == 503
    assert failed.headers["x-emulator-fault"] == fault["spec"]
    assert "injected" in failed.json()["message"]
    # Other methods and paths are untouched.
    assert client.post(PROMPTS, json={"name": "p", "prompt": "x"}).status_code == 201
    assert client.get("/api/public/health").status_code == 200
    assert client.get(FAULTS).json()["faults"][0]["fired"] == 1

    assert client.delete(FAULTS).status_code == 204
    assert client.get(PROMPTS).status_code == 200
    assert client.get(FAULTS).json()["faults"] == []


def test_a_latency_fault_delays_the_real_answer(client: httpx.Client) -> None:
    fault = add(client, method="GET", path="/api/public/v2/prompts", latency="300ms")
    started = time.monotonic()
    slow = client.get(PROMPTS)
    assert time.monotonic() - started >= 0.3
    assert slow.status_code == 200
    assert slow.json()["data"] == []
    assert client.delete(f"{FAULTS}/{fault['id']}").status_code == 204
    assert client.get(FAULTS).json()["faults"] == []
    assert client.delete(f"{FAULTS}/{fault['id']}").status_code == 404


def test_a_malformed_fault_garbles_the_json_body(client: httpx.Client) -> None:
    client.post(PROMPTS, json={"name": "p", "prompt": "x", "labels": ["production"]})
    add(client, spec="GET:/api/public/v2/prompts/=malformed")
    garbled = client.get(f"{PROMPTS}/p")
    assert garbled.status_code == 200
    assert garbled.headers["content-type"] == "application/json"
    assert int(garbled.headers["content-length"]) == len(garbled.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbled.content)
    assert client.get(PROMPTS).json()["meta"]["totalItems"] == 1  # prefix does not match
    client.delete(FAULTS)
    assert client.get(f"{PROMPTS}/p").json()["name"] == "p"


def test_a_timeout_fault_holds_the_request(client: httpx.Client) -> None:
    add(client, spec="GET:/api/public/v2/prompts=timeout:5s")
    with pytest.raises(httpx.ReadTimeout):
        client.get(PROMPTS, timeout=0.3)


def test_rate_and_times_are_seeded_and_bounded(client: httpx.Client) -> None:
    def statuses() -> list[int]:
        return [client.get(PROMPTS).status_code for _ in range(20)]

    add(client, spec="/api/public/v2/prompts=status:500,rate:0.5")
    first = statuses()
    assert {500, 200} == set(first)
    client.delete(FAULTS)  # clears and restarts the generator from the seed
    add(client, spec="/api/public/v2/prompts=status:500,rate:0.5")
    assert statuses() == first

    client.delete(FAULTS)
    add(client, spec="GET:/api/public/v2/prompts=status:502,times:2")
    assert statuses()[:4] == [502, 502, 200, 200]


def test_faults_given_at_start_apply_at_once() -> None:
    live = start_emulator(EmulatorSettings(faults=("GET:/api/public/v2/prompts=status:429",)))
    try:
        with live.client() as http:
            assert http.get(PROMPTS).status_code == 429
            assert http.get(FAULTS).json()["faults"][0]["spec"].endswith("=status:429")
    finally:
        live.stop()
    assert not live.checked.violations


def test_the_admin_route_needs_the_project_keys(emulator: LiveEmulator) -> None:
    with httpx.Client(base_url=emulator.base_url) as anonymous:
        assert anonymous.get(FAULTS).status_code == 401
        refused = anonymous.post(FAULTS, json={"spec": "/api/public=status:503"})
        assert refused.status_code == 401
    with emulator.client() as http:
        assert http.get(FAULTS).json()["faults"] == []


BAD_FAULTS: list[Any] = [
    {"spec": "GET:/api=status:200"},
    {"spec": "/api=rate:0.5"},
    {"spec": "api=status:503"},
    {"method": "GET", "path": "/api", "latency": 3},
    {"path": "/api", "status": 503, "colour": "red"},
    "not an object",
]


def test_bad_faults_are_refused_with_a_reason(client: httpx.Client) -> None:
    for body in BAD_FAULTS:
        response = client.post(FAULTS, json=body)
        assert response.status_code == 400, body
        assert response.json()["message"]
    assert client.get(FAULTS).json()["faults"] == []


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        (
            "GET:/api/public/v2/observations=status:503,rate:0.5",
            Fault("/api/public/v2/observations", "GET", status=503, rate=0.5),
        ),
        ("/api/public=latency:250ms", Fault("/api/public", latency=0.25)),
        (
            "post:/api/public/otel=timeout:10s,times:1",
            Fault("/api/public/otel", "POST", timeout=10.0, times=1),
        ),
        (
            "*:/api/public/v2/metrics=malformed,latency:1s",
            Fault("/api/public/v2/metrics", malformed=True, latency=1.0),
        ),
    ],
)
def test_spec_syntax(spec: str, fault: Fault) -> None:
    assert parse_fault(spec) == fault
    assert parse_fault(fault.spec) == fault


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("/api", "expected [METHOD:]PATH=OPTION"),
        ("FETCH:/api=status:503", "method 'FETCH'"),
        ("/api=status:503,malformed", "exclude each other"),
        ("/api=latency:5", "latency '5'"),
        ("/api=rate:2", "rate '2'"),
        ("/api=times:0", "times '0'"),
        ("/api=status", "status needs a value"),
        ("/api=status:503,status:500", "given twice"),
    ],
)
def test_spec_errors_say_what_is_wrong(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[")):
        parse_fault(spec)
