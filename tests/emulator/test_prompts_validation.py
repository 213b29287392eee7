"""Malformed prompt requests: 400 with Langfuse's message and zod issues."""

from __future__ import annotations

from typing import Any

import httpx

PROMPTS = "/api/public/v2/prompts"


def issues_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["message"] == "Invalid request data"
    issues: list[dict[str, Any]] = body["error"]
    return issues


def union_branches(response: httpx.Response) -> tuple[list[dict], list[dict]]:
    """zod reports a failed ``text | chat`` union as one issue holding both sides."""
    [union] = issues_of(response)
    assert (union["code"], union["path"], union["message"]) == (
        "invalid_union",
        [],
        "Invalid input",
    )
    text, chat = union["errors"]
    return text, chat


def test_body_that_is_not_json_is_a_plain_400(client: httpx.Client) -> None:
    response = client.post(
        PROMPTS, content=b'{"name": "x", ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.text == "Invalid JSON"


def test_missing_fields_are_listed_per_branch(client: httpx.Client) -> None:
    text, chat = union_branches(client.post(PROMPTS, json={"labels": ["production"]}))
    assert {
        "code": "invalid_type",
        "expected": "string",
        "path": ["name"],
        "message": "Invalid input: expected string, received undefined",
    } in text
    assert ["prompt"] in [item["path"] for item in text]
    assert {
        "code": "invalid_value",
        "values": ["chat"],
        "path": ["type"],
        "message": 'Invalid input: expected "chat"',
    } in chat


BAD_LABELS = [
    (
        "Production",
        "invalid_format",
        "Label must be lowercase alphanumeric with optional underscores, hyphens, or periods",
    ),
    ("x" * 37, "too_big", "Too big: expected string to have <=36 characters"),
    ("", "too_small", "Too small: expected string to have >=1 characters"),  # and the regex
]


def test_label_format_is_checked_on_create(client: httpx.Client) -> None:
    for label, code, message in BAD_LABELS:
        body = {"name": "p", "prompt": "x", "labels": [label]}
        text, _ = union_branches(client.post(PROMPTS, json=body))
        found = [(item["code"], item["path"], item["message"]) for item in text]
        assert found[0] == (code, ["labels", 0], message)
        assert all(path == ["labels", 0] for _, path, _ in found)
    assert client.get(PROMPTS).json()["data"] == []


def test_longest_label_and_odd_characters_pass(client: httpx.Client) -> None:
    label = "a.b-c_d" + "9" * 29
    response = client.post(PROMPTS, json={"name": "p", "prompt": "x", "labels": [label]})
    assert response.status_code == 201
    assert response.json()["labels"] == [label, "latest"]


BAD_NAMES = [
    ("a|b", "Prompt name cannot contain '|' character"),
    ("/a", "Name cannot start with a slash"),
    ("a//b", "Name cannot contain consecutive slashes"),
    ("a/", "Name cannot end with a slash"),
    ("new", "Prompt name cannot be 'new'"),
    ("  ", "Name cannot be empty"),
    ("<b>x</b>", "Text cannot contain HTML tags"),
]


def test_prompt_names_follow_langfuse_rules(client: httpx.Client) -> None:
    for name, message in BAD_NAMES:
        text, _ = union_branches(client.post(PROMPTS, json={"name": name, "prompt": "x"}))
        assert message in [item["message"] for item in text], name
    trimmed = client.post(PROMPTS, json={"name": " spaced ", "prompt": "x"})
    assert trimmed.json()["name"] == "spaced"


def test_chat_messages_must_be_messages_or_placeholders(client: httpx.Client) -> None:
    body = {
        "name": "c",
        "type": "chat",
        "prompt": [{"role": "user"}, {"type": "placeholder", "name": "1x"}],
    }
    _, chat = union_branches(client.post(PROMPTS, json=body))
    assert [item["path"] for item in chat] == [["prompt", 0], ["prompt", 1]]
    assert all(item["code"] == "invalid_union" for item in chat)


def test_patch_needs_a_list_of_strings(client: httpx.Client) -> None:
    client.post(PROMPTS, json={"name": "p", "prompt": "x"})
    missing = issues_of(client.patch(f"{PROMPTS}/p/versions/1", json={}))
    assert missing == [
        {
            "code": "invalid_type",
            "expected": "array",
            "path": ["newLabels"],
            "message": "Invalid input: expected array, received undefined",
        }
    ]
    wrong = issues_of(client.patch(f"{PROMPTS}/p/versions/1", json={"newLabels": ["ok", 3]}))
    assert [item["path"] for item in wrong] == [["newLabels", 1]]
    # The label format is only checked on create, as in Langfuse.
    odd = client.patch(f"{PROMPTS}/p/versions/1", json={"newLabels": ["Not Checked"]})
    assert odd.status_code == 200
    assert odd.json()["labels"] == ["Not Checked", "latest"]


def test_get_refuses_version_and_label_together(client: httpx.Client) -> None:
    client.post(PROMPTS, json={"name": "p", "prompt": "x"})
    response = client.get(f"{PROMPTS}/p", params={"version": 1, "label": "latest"})
    assert response.status_code == 400
    assert response.json() == {
        "message": "Cannot specify both version and label",
        "error": "InvalidRequestError",
    }
    bad_version = issues_of(client.get(f"{PROMPTS}/p", params={"version": "one"}))
    assert bad_version[0]["path"] == ["version"]
