"""Datasets, experiments, score configs and annotation queues survive a restart on the
same store file, like prompts and scores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from coalmine.emulator.settings import EmulatorSettings
from tests.emulator.emulator_support import LiveEmulator, langfuse_client, start_emulator


def stop(live: LiveEmulator) -> None:
    live.stop()
    live.app.state.store.close()
    assert not live.checked.violations, "\n".join(live.checked.violations)


READS: tuple[tuple[str, dict[str, str]], ...] = (
    ("/api/public/v2/datasets", {}),
    ("/api/public/dataset-items", {"datasetName": "golden"}),
    ("/api/public/score-configs", {}),
    ("/api/public/annotation-queues", {}),
    ("/api/public/datasets/golden/runs", {}),
)


def test_a_restart_keeps_the_ladder_objects(tmp_path: Path) -> None:
    tag = tmp_path.name[-12:].replace("_", "x")
    settings = EmulatorSettings(
        db=tmp_path / "langfuse.db", public_key=f"pk-lf-{tag}", secret_key=f"sk-lf-{tag}"
    )
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    first = start_emulator(settings)
    try:
        with langfuse_client(first) as langfuse:
            langfuse.create_dataset(name="golden")
            langfuse.create_dataset_item(dataset_name="golden", id="i1", input="q")
            langfuse.get_dataset("golden").run_experiment(
                name="gate", run_name="r1", task=lambda **_: "a"
            )
            config = langfuse.api.score_configs.create(name="ok", data_type="BOOLEAN")
            queue = langfuse.api.annotation_queues.create_queue(
                name="releases", score_config_ids=[config.id]
            )
            langfuse.api.annotation_queues.create_queue_item(
                queue.id, object_id="t1", object_type="TRACE"
            )
        with first.client() as http:
            before = [http.get(path, params=params).json() for path, params in READS]
            items_before = http.get(
                "/api/public/experiment-items", params={"fromStartTime": since}
            ).json()
            queue_items_before = http.get(f"/api/public/annotation-queues/{queue.id}/items").json()
    finally:
        stop(first)

    second = start_emulator(settings)
    try:
        with second.client() as http:
            assert [http.get(path, params=params).json() for path, params in READS] == before
            items = http.get("/api/public/experiment-items", params={"fromStartTime": since})
            assert items.json() == items_before
            assert len(items_before["data"]) == 1
            queue_items = http.get(f"/api/public/annotation-queues/{queue.id}/items").json()
            assert queue_items == queue_items_before
    finally:
        stop(second)
