"""Prompts v2 over HTTP: versions, Langfuse's label semantics, list, delete, folders."""

from __future__ import annotations

from typing import Any

import httpx

PROMPTS = "/api/public/v2/prompts"


def create(http: httpx.Client, name: str, prompt: Any = "Hello {{name}}", **fields: Any) -> dict:
    response = http.post(PROMPTS, json={"name": name, "prompt": prompt, **fields})
    assert response.status_code == 201, response.text
    body: dict = response.json()
    return body


def labels_by_version(http: httpx.Client, name: str) -> dict[int, list[str]]:
    """Every version's labels, read back one version at a time."""
    listing = http.get(PROMPTS, params={"name": name}).json()["data"]
    versions = listing[0]["versions"] if listing else []
    found = {}
    for version in versions:
        response = http.get(f"{PROMPTS}/{name}", params={"version": version})
        found[version] = response.json()["labels"]
    return found


def move(http: httpx.Client, name: str, version: int, *labels: str) -> httpx.Response:
    return http.patch(f"{PROMPTS}/{name}/versions/{version}", json={"newLabels": list(labels)})


def test_create_numbers_versions_and_always_labels_the_newest_latest(client: httpx.Client) -> None:
    first = create(client, "greeting")
    second = create(client, "greeting", "Hi {{name}}")
    assert (first["version"], second["version"]) == (1, 2)
    assert first["labels"] == ["latest"]
    assert second["labels"] == ["latest"]
    assert labels_by_version(client, "greeting") == {1: [], 2: ["latest"]}
    assert second["type"] == "text"
    assert second["config"] == {}
    assert second["createdBy"] == "API"
    assert {"id", "createdAt", "updatedAt", "projectId", "commitMessage"} <= second.keys()


def test_create_with_labels_takes_them_off_older_versions(client: httpx.Client) -> None:
    create(client, "greeting", labels=["production", "staging"])
    create(client, "greeting", "v2", labels=["canary"])
    create(client, "greeting", "v3", labels=["production", "production"])
    assert labels_by_version(client, "greeting") == {
        1: ["staging"],
        2: ["canary"],
        3: ["production", "latest"],
    }


def test_default_fetch_serves_production_and_404s_without_it(client: httpx.Client) -> None:
    create(client, "greeting", "v1")
    missing = client.get(f"{PROMPTS}/greeting")
    assert missing.status_code == 404
    assert missing.json() == {
        "message": "Prompt not found: 'greeting' with label 'production'",
        "error": "LangfuseNotFoundError",
    }
    create(client, "greeting", "v2", labels=["production"])
    create(client, "greeting", "v3")
    served = client.get(f"{PROMPTS}/greeting").json()
    assert (served["version"], served["prompt"]) == (2, "v2")
    assert client.get(f"{PROMPTS}/greeting", params={"label": "latest"}).json()["version"] == 3
    assert client.get(f"{PROMPTS}/greeting", params={"version": 1}).json()["prompt"] == "v1"
    by_version = client.get(f"{PROMPTS}/greeting", params={"version": 9})
    assert by_version.status_code == 404
    assert by_version.json()["message"] == "Prompt not found: 'greeting' with version 9"
    by_label = client.get(f"{PROMPTS}/greeting", params={"label": "canary"})
    assert by_label.json()["message"] == "Prompt not found: 'greeting' with label 'canary'"


def test_patch_adds_labels_and_moves_them_off_every_other_version(client: httpx.Client) -> None:
    create(client, "greeting", "v1", labels=["production", "stable"])
    create(client, "greeting", "v2", labels=["canary"])
    response = move(client, "greeting", 2, "production")
    assert response.status_code == 200
    assert response.json()["labels"] == ["production", "canary", "latest"]
    assert response.json()["version"] == 2
    assert labels_by_version(client, "greeting") == {
        1: ["stable"],
        2: ["production", "canary", "latest"],
    }
    # Additive: an empty list changes nothing, and labels cannot be removed this way.
    assert move(client, "greeting", 1).json()["labels"] == ["stable"]
    assert labels_by_version(client, "greeting")[2] == ["production", "canary", "latest"]


def test_production_moves_back_and_forth(client: httpx.Client) -> None:
    for text in ("v1", "v2", "v3"):
        create(client, "greeting", text)
    served = []
    for version in (2, 3, 1, 3, 2):
        assert move(client, "greeting", version, "production").status_code == 200
        served.append(client.get(f"{PROMPTS}/greeting").json()["version"])
        holders = [
            v
            for v, labels in labels_by_version(client, "greeting").items()
            if "production" in labels
        ]
        assert holders == [version]
    assert served == [2, 3, 1, 3, 2]
    assert labels_by_version(client, "greeting")[3] == ["latest"]


def test_latest_is_never_movable(client: httpx.Client) -> None:
    create(client, "greeting", "v1")
    create(client, "greeting", "v2")
    refused = move(client, "greeting", 1, "latest")
    assert refused.status_code == 400
    assert refused.json() == {
        "message": "Invalid request data",
        "error": [
            {
                "code": "custom",
                "path": ["newLabels"],
                "message": "Label 'latest' is always assigned to the latest prompt version",
            }
        ],
    }
    assert move(client, "greeting", 1, "production", "latest").status_code == 400
    assert labels_by_version(client, "greeting") == {1: [], 2: ["latest"]}


def test_patch_of_a_missing_version_is_404(client: httpx.Client) -> None:
    create(client, "greeting")
    for name, version in (("greeting", 7), ("nothing", 1)):
        response = move(client, name, version, "production")
        assert response.status_code == 404
        assert response.json() == {
            "message": f"Prompt not found: {name}",
            "error": "LangfuseNotFoundError",
        }


def test_tags_are_shared_and_kept_when_omitted(client: httpx.Client) -> None:
    create(client, "greeting", tags=["support", "en"])
    assert create(client, "greeting", "v2")["tags"] == ["support", "en"]
    assert create(client, "greeting", "v3", tags=["fr"])["tags"] == ["fr"]
    first = client.get(f"{PROMPTS}/greeting", params={"version": 1}).json()
    assert first["tags"] == ["fr"]


def test_the_type_cannot_change_between_versions(client: httpx.Client) -> None:
    create(client, "greeting")
    response = client.post(
        PROMPTS,
        json={"name": "greeting", "type": "chat", "prompt": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 400
    assert response.json() == {
        "message": "Previous versions have different prompt type. Create a new prompt with a "
        "different name.",
        "error": "ValidationError",
    }


def test_chat_prompts_keep_messages_and_placeholders(client: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "You are {{persona}}", "extra": "dropped"},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "{{question}}"},
    ]
    created = create(client, "assistant", messages, type="chat", config={"model": "m", "t": 0.2})
    assert created["type"] == "chat"
    assert created["prompt"] == [
        {"role": "system", "content": "You are {{persona}}"},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "{{question}}"},
    ]
    fetched = client.get(f"{PROMPTS}/assistant", params={"label": "latest"}).json()
    assert fetched["prompt"] == created["prompt"]
    assert fetched["config"] == {"model": "m", "t": 0.2}


def test_folder_names_are_url_encoded(client: httpx.Client) -> None:
    create(client, "team/support/greeting", labels=["production"])
    fetched = client.get(f"{PROMPTS}/team%2Fsupport%2Fgreeting")
    assert fetched.status_code == 200
    assert fetched.json()["name"] == "team/support/greeting"
    moved = client.patch(
        f"{PROMPTS}/team%2Fsupport%2Fgreeting/versions/1", json={"newLabels": ["canary"]}
    )
    assert moved.json()["labels"] == ["canary", "production", "latest"]
    deleted = client.delete(f"{PROMPTS}/team%2Fsupport%2Fgreeting")
    assert deleted.status_code == 204


def test_delete_by_label_deletes_every_version_carrying_it(client: httpx.Client) -> None:
    create(client, "greeting", "v1", labels=["production"])
    create(client, "greeting", "v2", labels=["canary"])
    create(client, "greeting", "v3")
    response = client.delete(f"{PROMPTS}/greeting", params={"label": "canary"})
    assert response.status_code == 204
    assert response.content == b""
    assert sorted(labels_by_version(client, "greeting")) == [1, 3]
    assert client.delete(f"{PROMPTS}/greeting", params={"version": 3}).status_code == 204
    # Deleting the newest version leaves no version labelled latest, as in Langfuse.
    assert labels_by_version(client, "greeting") == {1: ["production"]}
    assert create(client, "greeting", "again")["version"] == 2


def test_delete_answers_404_when_nothing_matches_and_400_for_both_filters(
    client: httpx.Client,
) -> None:
    create(client, "greeting")
    for params in ({"label": "canary"}, {"version": 5}):
        response = client.delete(f"{PROMPTS}/greeting", params=params)
        assert response.status_code == 404
        assert response.json() == {"message": "Prompt not found", "error": "LangfuseNotFoundError"}
    both = client.delete(f"{PROMPTS}/greeting", params={"label": "latest", "version": 1})
    assert both.status_code == 400
    assert both.json()["message"] == "Cannot specify both version and label"
    assert client.delete(f"{PROMPTS}/greeting").status_code == 204
    assert client.delete(f"{PROMPTS}/greeting").status_code == 404


def test_list_groups_versions_by_name_with_filters(client: httpx.Client) -> None:
    create(client, "b-prompt", "v1", labels=["production"], tags=["x"], config={"n": 1})
    create(client, "b-prompt", "v2", labels=["canary"], config={"n": 2})
    create(client, "a-prompt", [{"role": "user", "content": "q"}], type="chat", tags=["y"])
    listing = client.get(PROMPTS).json()
    assert [item["name"] for item in listing["data"]] == ["a-prompt", "b-prompt"]
    b_meta = listing["data"][1]
    assert b_meta["versions"] == [1, 2]
    assert b_meta["labels"] == ["canary", "latest", "production"]
    assert b_meta["tags"] == ["x"]
    assert b_meta["type"] == "text"
    assert b_meta["lastConfig"] == {"n": 2}
    assert listing["data"][0]["type"] == "chat"
    assert listing["meta"] == {"page": 1, "limit": 10, "totalItems": 2, "totalPages": 1}
    assert listing["pagination"] == listing["meta"]

    production = client.get(PROMPTS, params={"name": "b-prompt", "label": "production"}).json()
    assert production["data"][0]["versions"] == [1]
    assert production["data"][0]["lastConfig"] == {"n": 1}
    tagged = client.get(PROMPTS, params={"tag": "y"}).json()["data"]
    assert [item["name"] for item in tagged] == ["a-prompt"]
    assert client.get(PROMPTS, params={"label": "nothing"}).json()["data"] == []


def test_list_pages_and_updated_at_window(client: httpx.Client) -> None:
    created = [create(client, f"p{index}") for index in range(5)]
    second_page = client.get(PROMPTS, params={"page": 2, "limit": 2}).json()
    assert [item["name"] for item in second_page["data"]] == ["p2", "p3"]
    assert second_page["meta"] == {"page": 2, "limit": 2, "totalItems": 5, "totalPages": 3}
    assert client.get(PROMPTS, params={"limit": 100}).status_code == 200

    since = created[3]["updatedAt"]
    recent = client.get(PROMPTS, params={"fromUpdatedAt": since}).json()["data"]
    assert [item["name"] for item in recent] == ["p3", "p4"]
    before = client.get(PROMPTS, params={"toUpdatedAt": since}).json()["data"]
    assert [item["name"] for item in before] == ["p0", "p1", "p2"]


BAD_PAGING = [
    ({"limit": 101}, ["limit"], "Too big: expected number to be <=100"),
    ({"limit": 0}, ["limit"], "Too small: expected number to be >=1"),
    ({"page": 0}, ["page"], "Too small: expected number to be >=1"),
    ({"page": "two"}, ["page"], "Invalid input: expected number, received NaN"),
    ({"limit": 1.5}, ["limit"], "Invalid input: expected int, received number"),
    ({"fromUpdatedAt": "yesterday"}, ["fromUpdatedAt"], "Invalid ISO datetime"),
]


def test_list_refuses_bad_paging_with_zod_issues(client: httpx.Client) -> None:
    for params, path, message in BAD_PAGING:
        response = client.get(PROMPTS, params=params)
        assert response.status_code == 400, params
        body = response.json()
        assert body["message"] == "Invalid request data"
        [found] = body["error"]
        assert (found["path"], found["message"]) == (path, message)
        assert found["code"] in {"too_big", "too_small", "invalid_type", "invalid_format"}
