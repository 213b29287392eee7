"""The health route, and Basic auth as Langfuse checks it."""

from __future__ import annotations

import httpx
from conftest import LiveEmulator


def test_health_answers_without_credentials(emulator: LiveEmulator) -> None:
    with httpx.Client(base_url=emulator.base_url) as http:
        response = http.get("/api/public/health")
    assert response.status_code == 200
    assert response.json()["status"] == "OK"
    assert emulator.checked.responses == 1
