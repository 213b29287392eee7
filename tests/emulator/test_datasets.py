"""Datasets and dataset items: the official SDK (5.x) as client, every response checked
against the spec; raw HTTP only for errors and what the SDK does not send."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import cast

import httpx
import pytest
from langfuse import Langfuse
from langfuse.api.commons.types.dataset_status import DatasetStatus
from langfuse.api.core.api_error import ApiError

from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings

ARCHIVED = cast(DatasetStatus, DatasetStatus.ARCHIVED)  # the SDK's enum reads as str to mypy

emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator) as client:
        yield client


def test_create_get_and_list_datasets(langfuse: Langfuse) -> None:
    created = langfuse.create_dataset(
        name="team/golden", description="golden set", metadata={"owner": "qa"}
    )
    langfuse.create_dataset(name="other")
    fetched = langfuse.api.datasets.get(dataset_name="team%2Fgolden")
    assert (fetched.id, fetched.name, fetched.description) == (
        created.id,
        "team/golden",
        "golden set",
    )
    assert fetched.metadata == {"owner": "qa"}
    page = langfuse.api.datasets.list(page=1, limit=1)
    assert (page.meta.total_items, page.meta.total_pages, len(page.data)) == (2, 2, 1)
    assert page.data[0].name == "other"  # newest first


def test_dataset_create_is_an_upsert_on_name(langfuse: Langfuse) -> None:
    first = langfuse.create_dataset(name="golden", description="v1", metadata={"a": 1})
    second = langfuse.create_dataset(name="golden", description="v2")
    assert second.id == first.id
    assert (second.description, second.metadata) == ("v2", {"a": 1})
    assert langfuse.api.datasets.list().meta.total_items == 1


def test_items_round_trip_through_get_dataset(langfuse: Langfuse) -> None:
    langfuse.create_dataset(name="golden")
    for index in range(5):
        langfuse.create_dataset_item(
            dataset_name="golden",
            input={"question": f"q{index}"},
            expected_output=f"a{index}",
            metadata={"index": index},
        )
    dataset = langfuse.get_dataset("golden", fetch_items_page_size=2)  # three pages
    assert sorted(item.input["question"] for item in dataset.items) == [f"q{i}" for i in range(5)]
    item = dataset.items[0]
    assert (item.dataset_name, item.dataset_id, item.status) == ("golden", dataset.id, "ACTIVE")
    assert item.expected_output == f"a{item.metadata['index']}"


def test_item_upsert_on_id_and_archived_items_leave_the_list(langfuse: Langfuse) -> None:
    langfuse.create_dataset(name="golden")
    langfuse.create_dataset_item(dataset_name="golden", id="item-1", input="x", expected_output="y")
    updated = langfuse.create_dataset_item(dataset_name="golden", id="item-1", input="x2")
    assert (updated.id, updated.input, updated.expected_output) == ("item-1", "x2", "y")
    langfuse.create_dataset_item(dataset_name="golden", id="item-2", input="z")
    langfuse.create_dataset_item(dataset_name="golden", id="item-2", status=ARCHIVED)
    listed = langfuse.api.dataset_items.list(dataset_name="golden")
    assert [item.id for item in listed.data] == ["item-1"]
    archived = langfuse.api.dataset_items.get(id="item-2")
    assert (archived.status, archived.input) == ("ARCHIVED", "z")
    assert [item.id for item in langfuse.get_dataset("golden").items] == ["item-1"]


def test_item_id_of_another_dataset_is_404(langfuse: Langfuse, client: httpx.Client) -> None:
    langfuse.create_dataset(name="a")
    langfuse.create_dataset(name="b")
    langfuse.create_dataset_item(dataset_name="a", id="shared", input=1)
    answer = client.post("/api/public/dataset-items", json={"datasetName": "b", "id": "shared"})
    assert answer.status_code == 404
    assert "already exists in a dataset other than b" in answer.json()["message"]


def test_versions_read_items_as_they_were(langfuse: Langfuse) -> None:
    langfuse.create_dataset(name="golden")
    langfuse.create_dataset_item(dataset_name="golden", id="one", input="first")
    pinned = datetime.now(UTC)
    while datetime.now(UTC) <= pinned:  # the next write lands in a later millisecond
        pass
    langfuse.create_dataset_item(dataset_name="golden", id="one", input="changed")
    langfuse.create_dataset_item(dataset_name="golden", id="two", input="added")
    langfuse.api.dataset_items.delete(id="one")
    then = langfuse.get_dataset("golden", version=pinned)
    assert [(item.id, item.input) for item in then.items] == [("one", "first")]
    now = langfuse.get_dataset("golden")
    assert [(item.id, item.input) for item in now.items] == [("two", "added")]


def test_delete_item(langfuse: Langfuse) -> None:
    langfuse.create_dataset(name="golden")
    langfuse.create_dataset_item(dataset_name="golden", id="gone", input=1)
    assert langfuse.api.dataset_items.delete(id="gone").message
    with pytest.raises(ApiError) as raised:
        langfuse.api.dataset_items.get(id="gone")
    assert raised.value.status_code == 404


def test_errors(client: httpx.Client) -> None:
    missing = client.get("/api/public/v2/datasets/nope")
    assert (missing.status_code, missing.json()["message"]) == (404, "Dataset not found")
    no_dataset = client.post("/api/public/dataset-items", json={"datasetName": "nope"})
    assert no_dataset.status_code == 404
    listing = client.get("/api/public/dataset-items", params={"datasetName": "nope"})
    assert listing.status_code == 404
    no_name = client.post("/api/public/v2/datasets", json={"description": "x"})
    assert no_name.status_code == 400
    assert no_name.json()["error"][0]["path"] == ["name"]
    client.post("/api/public/v2/datasets", json={"name": "golden"})
    long_id = client.post(
        "/api/public/dataset-items", json={"datasetName": "golden", "id": "x" * 256}
    )
    assert long_id.status_code == 400
    bad_status = client.post(
        "/api/public/dataset-items", json={"datasetName": "golden", "status": "DONE"}
    )
    assert bad_status.status_code == 400
    version_alone = client.get(
        "/api/public/dataset-items", params={"version": "2026-01-01T00:00:00Z"}
    )
    assert version_alone.status_code == 400
    bad_page = client.get("/api/public/v2/datasets", params={"page": "0"})
    assert bad_page.status_code == 400
