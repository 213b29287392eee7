"""The store: a file keeps everything across restarts; a full store refuses writes only."""

from __future__ import annotations

from pathlib import Path

from coalmine.emulator.settings import EmulatorSettings
from tests.emulator.emulator_support import LiveEmulator, start_emulator

PROMPTS = "/api/public/v2/prompts"


def stop(live: LiveEmulator) -> None:
    live.stop()
    live.app.state.store.close()
    assert not live.checked.violations, "\n".join(live.checked.violations)


def test_a_restart_on_the_same_file_loses_nothing(tmp_path: Path) -> None:
    settings = EmulatorSettings(db=tmp_path / "langfuse.db")
    first = start_emulator(settings)
    try:
        with first.client() as http:
            http.post(
                PROMPTS,
                json={
                    "name": "team/greeting",
                    "prompt": "v1",
                    "labels": ["production"],
                    "tags": ["t"],
                },
            )
            http.post(PROMPTS, json={"name": "team/greeting", "prompt": "v2", "labels": ["canary"]})
            chat = [{"role": "system", "content": "be brief"}]
            http.post(
                PROMPTS,
                json={"name": "assistant", "type": "chat", "prompt": chat, "config": {"m": 1}},
            )
            http.patch(f"{PROMPTS}/team%2Fgreeting/versions/2", json={"newLabels": ["production"]})
            before = [
                http.get(f"{PROMPTS}/team%2Fgreeting", params={"version": version}).json()
                for version in (1, 2)
            ]
            listing_before = http.get(PROMPTS).json()
    finally:
        stop(first)

    second = start_emulator(settings)
    try:
        with second.client() as http:
            after = [
                http.get(f"{PROMPTS}/team%2Fgreeting", params={"version": version}).json()
                for version in (1, 2)
            ]
            assert after == before
            assert [item["labels"] for item in after] == [[], ["production", "canary", "latest"]]
            assert http.get(PROMPTS).json() == listing_before
            assert http.get(f"{PROMPTS}/assistant", params={"label": "latest"}).json()[
                "config"
            ] == {"m": 1}
            third = http.post(PROMPTS, json={"name": "team/greeting", "prompt": "v3"}).json()
            assert third["version"] == 3
    finally:
        stop(second)


def test_a_full_store_answers_507_and_keeps_what_it_had() -> None:
    live = start_emulator(EmulatorSettings(max_bytes=256 * 1024))
    stored = []
    try:
        with live.client() as http:
            for index in range(64):
                response = http.post(PROMPTS, json={"name": f"p{index}", "prompt": "x" * 20_000})
                if response.status_code != 201:
                    break
                stored.append(f"p{index}")
            assert response.status_code == 507
            assert "store is full" in response.json()["message"]
            assert 2 <= len(stored) < 64
            listing = http.get(PROMPTS, params={"limit": 100}).json()
            assert sorted(item["name"] for item in listing["data"]) == sorted(stored)
            for name in stored:
                assert http.get(f"{PROMPTS}/{name}", params={"label": "latest"}).status_code == 200
            # Deleting frees room for new writes.
            assert http.delete(f"{PROMPTS}/{stored[0]}").status_code == 204
            assert http.post(PROMPTS, json={"name": "small", "prompt": "x"}).status_code == 201
    finally:
        stop(live)


def _span_export(trace_id: str, span_id: str, tags: list[str]) -> dict[str, object]:
    attributes = [
        {
            "key": "langfuse.trace.tags",
            "value": {"arrayValue": {"values": [{"stringValue": tag} for tag in tags]}},
        }
    ]
    span = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "chat",
        "kind": 1,
        "startTimeUnixNano": "1790000000000000000",
        "endTimeUnixNano": "1790000000500000000",
        "attributes": attributes,
        "status": {"code": 2, "message": "boom"},
    }
    return {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [span]}]}]}


def test_spans_and_scores_survive_a_restart(tmp_path: Path) -> None:
    settings = EmulatorSettings(db=tmp_path / "langfuse.db")
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    first = start_emulator(settings)
    try:
        with first.client() as http:
            sent = http.post(
                "/api/public/otel/v1/traces",
                json=_span_export(trace_id, span_id, ["coalmine:arm:canary"]),
            )
            assert sent.status_code == 200, sent.text
            scored = http.post(
                "/api/public/scores",
                json={"name": "helpfulness", "value": 0.4, "traceId": trace_id},
            )
            assert scored.status_code == 200, scored.text
            spans_before = http.get(
                "/api/public/v2/observations", params={"fields": "core,basic,trace_context"}
            ).json()["data"]
            scores_before = http.get("/api/public/v3/scores", params={"fields": "subject"}).json()[
                "data"
            ]
    finally:
        stop(first)
    assert [span["level"] for span in spans_before] == ["ERROR"]

    second = start_emulator(settings)
    try:
        with second.client() as http:
            spans_after = http.get(
                "/api/public/v2/observations", params={"fields": "core,basic,trace_context"}
            ).json()["data"]
            scores_after = http.get("/api/public/v3/scores", params={"fields": "subject"}).json()[
                "data"
            ]
    finally:
        stop(second)
    assert spans_after == spans_before
    assert scores_after == scores_before
    assert spans_after[0]["tags"] == ["coalmine:arm:canary"]
    assert scores_after[0]["subject"]["id"] == trace_id
