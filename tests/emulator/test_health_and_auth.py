"""The health route, API keys as Langfuse checks them, and the request size limit."""

from __future__ import annotations

import base64
import hashlib

import httpx

from tests.emulator.emulator_support import LiveEmulator
from tests.emulator.spec_check import SPEC_PATH

PROMPTS = "/api/public/v2/prompts"
HINT = ". Confirm that you've configured the correct host."


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_health_answers_without_credentials(emulator: LiveEmulator) -> None:
    with httpx.Client(base_url=emulator.base_url) as http:
        response = http.get("/api/public/health")
    assert response.status_code == 200
    assert response.json()["status"] == "OK"
    assert emulator.checked.responses == 1


BAD_KEYS = [
    (None, "No authorization header"),
    (basic("pk-lf-coalmine-local:sk-lf-wrong"), "Invalid credentials" + HINT),
    (basic("pk-lf-other:sk-lf-coalmine-local"), "Invalid credentials" + HINT),
    (basic("pk-lf-coalmine-local"), "Invalid authorization header" + HINT),
    (basic("pk-lf-coalmine-local:"), "Invalid authorization header" + HINT),
    ("Basic not-base64!", "Invalid authorization header" + HINT),
    ("Basic", "Invalid authorization header"),
    ("Token abc", "Invalid authorization header"),
    (
        "basic " + basic("pk-lf-coalmine-local:sk-lf-coalmine-local")[6:],
        "Invalid authorization header",
    ),
    ("Bearer pk-lf-other", "Invalid public key" + HINT),
]


def test_prompt_routes_refuse_bad_keys_with_401(emulator: LiveEmulator) -> None:
    for header, message in BAD_KEYS:
        headers = {} if header is None else {"authorization": header}
        with httpx.Client(base_url=emulator.base_url, headers=headers) as http:
            response = http.get(PROMPTS)
        assert response.status_code == 401, header
        assert response.json() == {"message": message, "error": "UnauthorizedError"}, header


def test_bearer_public_key_is_forbidden_on_prompts(emulator: LiveEmulator) -> None:
    bearer = {"authorization": f"Bearer {emulator.settings.public_key}"}
    with httpx.Client(base_url=emulator.base_url, headers=bearer) as http:
        listing = http.get(PROMPTS)
        created = http.post(PROMPTS, json={"name": "p", "prompt": "x"})
        deleted = http.delete(f"{PROMPTS}/p")
        moved = http.patch(f"{PROMPTS}/p/versions/1", json={"newLabels": ["production"]})
    assert listing.status_code == 403
    assert listing.json() == {
        "message": "Access denied - need to use basic auth with secret key to GET prompts",
        "error": "ForbiddenError",
    }
    assert created.status_code == 403
    assert created.json()["message"].endswith("to POST prompts")
    assert deleted.status_code == 403
    # Label updates go through Langfuse's generic project route, which says 401.
    assert moved.status_code == 401
    assert moved.json() == {"message": "Access denied - need to use basic auth with secret key"}


def test_keys_are_checked_before_the_body(emulator: LiveEmulator) -> None:
    with httpx.Client(base_url=emulator.base_url) as http:
        response = http.patch(f"{PROMPTS}/p/versions/1", json={"newLabels": "x"})
    assert response.status_code == 401
    assert response.json() == {"message": "No authorization header"}


def test_custom_keys_are_the_only_ones_accepted(emulator: LiveEmulator) -> None:
    with emulator.client() as http:
        assert http.get(PROMPTS).status_code == 200
    with httpx.Client(
        base_url=emulator.base_url, auth=("pk-lf-coalmine-local", "sk-lf-coalmine-local-x")
    ) as http:
        assert http.get(PROMPTS).status_code == 401


def test_bodies_over_5_mb_are_refused_with_413(client: httpx.Client) -> None:
    big = b'{"name": "p", "prompt": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    response = client.post(PROMPTS, content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.text == "Body exceeded 5mb limit"
    assert client.get(PROMPTS).json()["data"] == []


def test_streamed_bodies_over_the_limit_are_refused_too(client: httpx.Client) -> None:
    def chunks() -> object:
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    response = client.post(PROMPTS, content=chunks(), headers={"content-type": "application/json"})  # type: ignore[arg-type]
    assert response.status_code == 413


def test_a_body_just_under_the_limit_gets_through(client: httpx.Client) -> None:
    prompt = "x" * (5 * 1024 * 1024 - 100)
    response = client.post(PROMPTS, json={"name": "big", "prompt": prompt})
    assert response.status_code == 201
    assert client.get(f"{PROMPTS}/big", params={"label": "latest"}).json()["prompt"] == prompt


def test_the_spec_beside_the_tests_is_the_reference_copy() -> None:
    """The spec the responses are checked against is Langfuse 4.16.0's, unmodified."""
    digest = hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest()
    assert digest.startswith("896774f9") and digest.endswith("b233")
