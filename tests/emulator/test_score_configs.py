"""Score configs through the official SDK, and scores that name one: checked after
they are accepted, dropped without a word when they do not fit, as Langfuse's worker
does."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from langfuse import Langfuse
from langfuse.api import ConfigCategory

from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings

emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator) as client:
        yield client


def test_create_get_list_update(langfuse: Langfuse) -> None:
    configs = langfuse.api.score_configs
    numeric = configs.create(name="quality (0-1)", data_type="NUMERIC", min_value=0, max_value=1)
    boolean = configs.create(name="approved", data_type="BOOLEAN", description="release ok")
    categorical = configs.create(
        name="verdict",
        data_type="CATEGORICAL",
        categories=[
            ConfigCategory(value=1, label="approve"),
            ConfigCategory(value=0, label="reject"),
        ],
    )
    again = configs.create(name="approved", data_type="BOOLEAN")
    assert again.id != boolean.id  # names are not unique
    assert (numeric.min_value, numeric.max_value, numeric.is_archived) == (0, 1, False)
    assert [(c.label, c.value) for c in boolean.categories or []] == [("True", 1), ("False", 0)]
    assert configs.get_by_id(categorical.id).categories == categorical.categories
    page = configs.get(page=1, limit=3)
    assert (page.meta.total_items, len(page.data)) == (4, 3)
    archived = configs.update(boolean.id, is_archived=True)
    assert archived.is_archived and archived.name == "approved"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x" * 36, "dataType": "NUMERIC"},
        {"name": "bad/name", "dataType": "NUMERIC"},
        {"name": "n", "dataType": "CORRECTION"},
        {"name": "n", "dataType": "NUMERIC", "minValue": 2, "maxValue": 1},
        {"name": "n", "dataType": "BOOLEAN", "categories": [{"value": 1, "label": "yes"}]},
        {"name": "n", "dataType": "CATEGORICAL"},
        {"name": "n", "dataType": "CATEGORICAL", "categories": [{"value": 1, "label": "a"}] * 2},
        {"name": "n", "dataType": "TEXT", "maxValue": 3},
    ],
)
def test_bad_configs_are_400(client: httpx.Client, body: dict[str, object]) -> None:
    answer = client.post("/api/public/score-configs", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"]


def test_unknown_config_is_404(client: httpx.Client) -> None:
    assert client.get("/api/public/score-configs/nope").status_code == 404


def test_scores_that_do_not_fit_their_config_are_dropped(
    langfuse: Langfuse, client: httpx.Client
) -> None:
    configs = langfuse.api.score_configs
    quality = configs.create(name="quality", data_type="NUMERIC", min_value=0, max_value=1)
    verdict = configs.create(
        name="verdict",
        data_type="CATEGORICAL",
        categories=[
            ConfigCategory(value=1, label="approve"),
            ConfigCategory(value=0, label="reject"),
        ],
    )
    writes = [
        ("in-range", "quality", 0.5, "NUMERIC", quality.id),
        ("out-of-range", "quality", 1.5, "NUMERIC", quality.id),
        ("wrong-name", "other", 0.5, "NUMERIC", quality.id),
        ("wrong-type", "quality", "high", "CATEGORICAL", quality.id),
        ("known-label", "verdict", "approve", "CATEGORICAL", verdict.id),
        ("unknown-label", "verdict", "maybe", "CATEGORICAL", verdict.id),
        ("unknown-config", "quality", 0.5, "NUMERIC", "nope"),
    ]
    for score_id, name, value, data_type, config_id in writes:
        answer = client.post(
            "/api/public/scores",
            json={
                "id": score_id,
                "traceId": TRACE,
                "name": name,
                "value": value,
                "dataType": data_type,
                "configId": config_id,
            },
        )
        assert answer.json() == {"id": score_id}  # accepted either way
    kept = client.get(
        "/api/public/v3/scores", params={"traceId": TRACE, "fields": "details"}
    ).json()["data"]
    # A config id the emulator does not know is stored as given (Langfuse drops it).
    assert sorted(score["id"] for score in kept) == ["in-range", "known-label", "unknown-config"]

    # The SDK's batch path goes through the same checks.
    langfuse.create_score(name="quality", value=3.0, trace_id=TRACE, config_id=quality.id)
    langfuse.create_score(name="quality", value=0.25, trace_id=TRACE, config_id=quality.id)
    langfuse.flush()
    page = langfuse.api.scores.get_many(trace_id=TRACE, config_id=quality.id)
    assert sorted(s.value for s in page.data) == [0.25, 0.5]
