"""Routes of the public API: prompts v2, with Langfuse's label semantics.

A row is one version of a prompt. Labels select versions and are unique per prompt
name: giving a label to one version takes it off every other version, in the same
transaction. ``latest`` is always on the newest version created and cannot be given by
hand. Tags are shared by all versions of a name. Sources: ``createPrompt.ts``,
``updatePrompts.ts``, ``deletePrompt.ts``, ``getPromptsMeta.ts`` and the zod schemas in
``packages/shared/src/features/prompts``.

Prompt dependencies (``@@@langfusePrompt:...@@@`` tags) are stored as written and not
resolved.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse

from coalmine.emulator.auth import require_project, require_prompts
from coalmine.emulator.errors import (
    MISSING,
    ApiError,
    bad_request,
    invalid,
    issue,
    js_type,
    not_found,
)
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store

router = APIRouter()

PRODUCTION = "production"
LATEST = "latest"
LABEL_PATTERN = re.compile(r"^[a-z0-9_\-.]+$")
LABEL_MAX = 36
COMMIT_MESSAGE_MAX = 500
PAGE_LIMIT_MAX = 100
PAGE_LIMIT_DEFAULT = 10
_HTML = re.compile(r"<[^>]*>")
_PLACEHOLDER_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")

Issues = list[dict[str, Any]]


# --- values as zod sees and reports them -------------------------------------------


def _type_issue(path: Sequence[str | int], expected: str, value: Any) -> dict[str, Any]:
    return issue(
        "invalid_type",
        path,
        f"Invalid input: expected {expected}, received {js_type(value)}",
        expected=expected,
    )


def _literal_issue(path: Sequence[str | int], literal: str) -> dict[str, Any]:
    return issue("invalid_value", path, f'Invalid input: expected "{literal}"', values=[literal])


def _regex_issue(
    path: Sequence[str | int], pattern: re.Pattern[str], message: str
) -> dict[str, Any]:
    return issue("invalid_format", path, message, format="regex", pattern=pattern.pattern)


def _string_list(
    value: Any, path: Sequence[str | int], issues: Issues, *, labels: bool = False
) -> list[str]:
    if not isinstance(value, list):
        issues.append(_type_issue(path, "array", value))
        return []
    for index, item in enumerate(value):
        where = [*path, index]
        if not isinstance(item, str):
            issues.append(_type_issue(where, "string", item))
        elif labels:
            issues.extend(_label_issues(item, where))
    return [item for item in value if isinstance(item, str)]


def _label_issues(label: str, path: Sequence[str | int]) -> Issues:
    found = []
    if len(label) < 1:
        found.append(
            issue(
                "too_small",
                path,
                "Too small: expected string to have >=1 characters",
                origin="string",
                minimum=1,
                inclusive=True,
            )
        )
    if len(label) > LABEL_MAX:
        found.append(
            issue(
                "too_big",
                path,
                f"Too big: expected string to have <={LABEL_MAX} characters",
                origin="string",
                maximum=LABEL_MAX,
                inclusive=True,
            )
        )
    if not LABEL_PATTERN.fullmatch(label):
        found.append(
            _regex_issue(
                path,
                LABEL_PATTERN,
                "Label must be lowercase alphanumeric with optional underscores, hyphens, "
                "or periods",
            )
        )
    return found


def _name(value: Any, issues: Issues) -> str:
    """``PromptNameSchema``: checks on the raw string, then trimmed and refined."""
    path = ["name"]
    if not isinstance(value, str):
        issues.append(_type_issue(path, "string", value))
        return ""
    before = len(issues)
    if not value:
        issues.append(issue("too_small", path, "Text cannot be empty", origin="string", minimum=1))
    if _HTML.search(value):
        issues.append(issue("custom", path, "Text cannot contain HTML tags"))
    checks = (
        (re.compile(r"^[^|]*$"), "Prompt name cannot contain '|' character"),
        (re.compile(r"^[^/]"), "Name cannot start with a slash"),
        (re.compile(r"^(?!.*\/\/)"), "Name cannot contain consecutive slashes"),
        (re.compile(r"^.*[^/]$"), "Name cannot end with a slash"),
    )
    for pattern, message in checks:
        if not pattern.search(value):
            issues.append(_regex_issue(path, pattern, message))
    if len(issues) > before:
        return ""
    name = value.strip()
    if not name:
        issues.append(issue("custom", path, "Name cannot be empty"))
    elif name == "new":
        issues.append(issue("custom", path, "Prompt name cannot be 'new'"))
    return name


def _optional_string(body: Mapping[str, Any], key: str, issues: Issues) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        issues.append(_type_issue([key], "string", value))
        return None
    return value


# --- the create request -------------------------------------------------------------


@dataclass(frozen=True)
class NewPrompt:
    """A validated create request."""

    name: str
    type: str
    prompt: str | list[dict[str, Any]]
    config: Any
    labels: list[str]
    tags: list[str] | None
    commit_message: str | None


def _chat_message(value: Any, path: Sequence[str | int]) -> tuple[dict[str, Any] | None, Issues]:
    """``PromptChatMessageSchema``: ``{role, content}`` (other keys dropped) or a
    placeholder ``{type: "placeholder", name}``."""
    if not isinstance(value, dict):
        return None, [_type_issue(path, "object", value)]
    role, content = value.get("role", MISSING), value.get("content", MISSING)
    message_issues = [
        _type_issue([*path, key], "string", got)
        for key, got in (("role", role), ("content", content))
        if not isinstance(got, str)
    ]
    if not message_issues:
        return {"role": role, "content": content}, []
    placeholder_issues: Issues = []
    if value.get("type", MISSING) != "placeholder":
        placeholder_issues.append(_literal_issue([*path, "type"], "placeholder"))
    name = value.get("name", MISSING)
    if not isinstance(name, str):
        placeholder_issues.append(_type_issue([*path, "name"], "string", name))
    elif not _PLACEHOLDER_NAME.fullmatch(name):
        placeholder_issues.append(
            _regex_issue(
                [*path, "name"],
                _PLACEHOLDER_NAME,
                "Placeholder name must start with a letter and contain only alphanumeric "
                "characters and underscores",
            )
        )
    if not placeholder_issues:
        return {"type": "placeholder", "name": name}, []
    return None, [
        issue(
            "invalid_union",
            path,
            "Invalid input",
            errors=[message_issues, placeholder_issues],
        )
    ]


def _branch(body: Mapping[str, Any], kind: str) -> tuple[NewPrompt | None, Issues]:
    """One side of ``CreatePromptSchema`` (text or chat)."""
    issues: Issues = []
    name = _name(body.get("name", MISSING), issues)
    labels_value = body.get("labels", MISSING)
    labels = (
        []
        if labels_value is MISSING
        else _string_list(labels_value, ["labels"], issues, labels=True)
    )
    prompt_type = body.get("type", MISSING)
    if kind == "text" and prompt_type not in (MISSING, "text"):
        issues.append(_literal_issue(["type"], "text"))
    if kind == "chat" and prompt_type != "chat":
        issues.append(_literal_issue(["type"], "chat"))
    raw_prompt = body.get("prompt", MISSING)
    prompt: str | list[dict[str, Any]] = ""
    if kind == "text":
        if isinstance(raw_prompt, str):
            prompt = raw_prompt
        else:
            issues.append(_type_issue(["prompt"], "string", raw_prompt))
    elif isinstance(raw_prompt, list):
        messages = []
        for index, item in enumerate(raw_prompt):
            message, message_issues = _chat_message(item, ["prompt", index])
            issues.extend(message_issues)
            if message is not None:
                messages.append(message)
        prompt = messages
    else:
        issues.append(_type_issue(["prompt"], "array", raw_prompt))
    config = body.get("config")
    tags_value = body.get("tags")
    tags = None if tags_value is None else _string_list(tags_value, ["tags"], issues)
    commit_message = _optional_string(body, "commitMessage", issues)
    if commit_message is not None and len(commit_message) > COMMIT_MESSAGE_MAX:
        issues.append(
            issue(
                "too_big",
                ["commitMessage"],
                f"Too big: expected string to have <={COMMIT_MESSAGE_MAX} characters",
                origin="string",
                maximum=COMMIT_MESSAGE_MAX,
                inclusive=True,
            )
        )
    if issues:
        return None, issues
    return (
        NewPrompt(
            name=name,
            type=kind,
            prompt=prompt,
            config={} if config is None else config,
            labels=labels,
            tags=tags,
            commit_message=commit_message,
        ),
        [],
    )


def parse_new_prompt(body: Any) -> NewPrompt:
    """A create request, or the 400 Langfuse answers: zod reports a failed union as one
    ``invalid_union`` issue holding the issues of each side."""
    if not isinstance(body, dict):
        raise invalid(
            [
                issue(
                    "invalid_union",
                    [],
                    "Invalid input",
                    errors=[[_type_issue([], "object", body)], [_type_issue([], "object", body)]],
                )
            ]
        )
    text, text_issues = _branch(body, "text")
    if text is not None:
        return text
    chat, chat_issues = _branch(body, "chat")
    if chat is not None:
        return chat
    raise invalid([issue("invalid_union", [], "Invalid input", errors=[text_issues, chat_issues])])


# --- query parameters ---------------------------------------------------------------


def _int_param(
    params: Mapping[str, str],
    key: str,
    issues: Issues,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """``z.coerce.number().int()`` with optional bounds, as zod v4 reports it."""
    raw = params.get(key)
    if raw is None:
        return None
    try:
        number = float(raw.strip()) if raw.strip() else 0.0
    except ValueError:
        number = math.nan
    if math.isnan(number):
        issues.append(
            issue(
                "invalid_type",
                [key],
                "Invalid input: expected number, received NaN",
                expected="number",
            )
        )
        return None
    if not number.is_integer():
        issues.append(
            issue(
                "invalid_type",
                [key],
                "Invalid input: expected int, received number",
                expected="int",
            )
        )
        return None
    value = int(number)
    if minimum is not None and value < minimum:
        issues.append(
            issue(
                "too_small",
                [key],
                f"Too small: expected number to be >={minimum}",
                origin="number",
                minimum=minimum,
                inclusive=True,
            )
        )
    if maximum is not None and value > maximum:
        issues.append(
            issue(
                "too_big",
                [key],
                f"Too big: expected number to be <={maximum}",
                origin="number",
                maximum=maximum,
                inclusive=True,
            )
        )
    return value


def _datetime_param(params: Mapping[str, str], key: str, issues: Issues) -> int | None:
    """``z.string().datetime({offset: true})`` as epoch milliseconds."""
    raw = params.get(key)
    if raw is None:
        return None
    parsed = None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})", raw):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None:
        issues.append(issue("invalid_format", [key], "Invalid ISO datetime", format="datetime"))
        return None
    return int(parsed.timestamp() * 1000)


# --- storage ------------------------------------------------------------------------


def _now() -> tuple[str, int]:
    moment = datetime.now(UTC)
    text = f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"
    return text, int(moment.timestamp() * 1000)


def _unique(items: Iterator[str] | Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _prompt_json(row: sqlite3.Row, settings: EmulatorSettings) -> dict[str, Any]:
    """A stored version as Langfuse returns it: the spec's ``Prompt`` plus the database
    columns the server passes through (``id``, ``createdAt``, ``updatedAt``,
    ``projectId``, ``createdBy``, ``isActive``); the spec allows extra properties."""
    return {
        "id": row["id"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "projectId": settings.project_id,
        "createdBy": row["created_by"],
        "prompt": json.loads(row["prompt"]),
        "name": row["name"],
        "version": row["version"],
        "type": row["type"],
        "isActive": None,  # a deprecated column that prompts v2 never sets
        "config": json.loads(row["config"]),
        "tags": json.loads(row["tags"]),
        "labels": json.loads(row["labels"]),
        "commitMessage": row["commit_message"],
    }


_HAS_LABEL = "EXISTS (SELECT 1 FROM json_each(prompts.labels) WHERE json_each.value = ?)"
_HAS_TAG = "EXISTS (SELECT 1 FROM json_each(prompts.tags) WHERE json_each.value = ?)"


def _take_labels_off(
    db: sqlite3.Connection, name: str, labels: Sequence[str], updated: tuple[str, int]
) -> None:
    """``removeLabelsFromPreviousPromptVersions``: every version of ``name`` carrying
    any of ``labels`` loses them."""
    if not labels:
        return
    holders = db.execute(
        "SELECT id, labels FROM prompts WHERE name = ? AND EXISTS "
        "(SELECT 1 FROM json_each(prompts.labels) WHERE json_each.value IN "
        f"({', '.join('?' * len(labels))}))",
        [name, *labels],
    ).fetchall()
    for holder in holders:
        kept = [label for label in json.loads(holder["labels"]) if label not in labels]
        db.execute(
            "UPDATE prompts SET labels = ?, updated_at = ?, updated_ms = ? WHERE id = ?",
            [json.dumps(kept), *updated, holder["id"]],
        )


def create_version(store: Store, new: NewPrompt) -> str:
    """Store ``new`` as the next version of its name; its id."""
    updated = _now()
    with store.transaction() as db:
        latest = db.execute(
            "SELECT version, type, tags FROM prompts WHERE name = ? ORDER BY version DESC LIMIT 1",
            [new.name],
        ).fetchone()
        if latest is not None and latest["type"] != new.type:
            raise ApiError(
                400,
                "Previous versions have different prompt type. Create a new prompt with "
                "a different name.",
                error="ValidationError",
            )
        labels = _unique([*new.labels, LATEST])
        previous_tags: list[str] = json.loads(latest["tags"]) if latest is not None else []
        tags = _unique(new.tags if new.tags is not None else previous_tags)
        _take_labels_off(db, new.name, labels, updated)
        prompt_id = uuid.uuid4().hex
        db.execute(
            "INSERT INTO prompts (id, name, version, type, prompt, config, labels, tags, "
            "commit_message, created_at, updated_at, updated_ms, created_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                prompt_id,
                new.name,
                (latest["version"] if latest is not None else 0) + 1,
                new.type,
                json.dumps(new.prompt),
                json.dumps(new.config),
                json.dumps(labels),
                json.dumps(tags),
                new.commit_message,
                updated[0],
                *updated,
                "API",
            ],
        )
        if sorted(set(tags)) != sorted(set(previous_tags)):
            db.execute(
                "UPDATE prompts SET tags = ?, updated_at = ?, updated_ms = ? "
                "WHERE name = ? AND id != ?",
                [json.dumps(tags), *updated, new.name, prompt_id],
            )
    return prompt_id


def add_labels(store: Store, name: str, version: int, new_labels: Sequence[str]) -> str:
    """``updatePrompt``: ``new_labels`` join the version's labels and leave every other
    version of ``name``; the version's id."""
    updated = _now()
    with store.transaction() as db:
        target = db.execute(
            "SELECT id, labels FROM prompts WHERE name = ? AND version = ?", [name, version]
        ).fetchone()
        if target is None:
            raise not_found(f"Prompt not found: {name}")
        labels = _unique([*new_labels, *json.loads(target["labels"])])
        _take_labels_off(db, name, _unique(new_labels), updated)
        db.execute(
            "UPDATE prompts SET labels = ?, updated_at = ?, updated_ms = ? WHERE id = ?",
            [json.dumps(labels), *updated, target["id"]],
        )
    return str(target["id"])


def _by_id(store: Store, prompt_id: str) -> sqlite3.Row:
    return store.query("SELECT * FROM prompts WHERE id = ?", [prompt_id])[0]


# --- routes -------------------------------------------------------------------------


def _context(request: Request) -> tuple[Store, EmulatorSettings]:
    return request.app.state.store, request.app.state.settings


@router.get("/api/public/v2/prompts", dependencies=[Depends(require_prompts)])
def list_prompts(request: Request) -> dict[str, Any]:
    """``getPromptsMeta``: one entry per name over the versions matching the filters,
    ordered by name."""
    store, _ = _context(request)
    params = request.query_params
    issues: Issues = []
    version = _int_param(params, "version", issues)
    page = _int_param(params, "page", issues, minimum=1)
    limit = _int_param(params, "limit", issues, minimum=1, maximum=PAGE_LIMIT_MAX)
    from_ms = _datetime_param(params, "fromUpdatedAt", issues)
    to_ms = _datetime_param(params, "toUpdatedAt", issues)
    if issues:
        raise invalid(issues)
    page = page or 1
    limit = limit or PAGE_LIMIT_DEFAULT
    where: list[str] = ["1 = 1"]
    args: list[str | int] = []
    for key, clause in (("name", "name = ?"), ("label", _HAS_LABEL), ("tag", _HAS_TAG)):
        if params.get(key):
            where.append(clause)
            args.append(params[key])
    if version:
        where.append("version = ?")
        args.append(version)
    if from_ms is not None:
        where.append("updated_ms >= ?")
        args.append(from_ms)
    if to_ms is not None:
        where.append("updated_ms < ?")
        args.append(to_ms)
    rows = store.query(
        f"SELECT * FROM prompts WHERE {' AND '.join(where)} ORDER BY name, version", args
    )
    groups: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        groups.setdefault(row["name"], []).append(row)
    names = sorted(groups)
    data = [_meta(groups[name]) for name in names[(page - 1) * limit : page * limit]]
    pages = {
        "page": page,
        "limit": limit,
        "totalPages": math.ceil(len(names) / limit),
        "totalItems": len(names),
    }
    # ``pagination`` duplicates ``meta`` for clients of the first /v2/prompts release.
    return {"data": data, "meta": pages, "pagination": dict(pages)}


def _meta(versions: list[sqlite3.Row]) -> dict[str, Any]:
    newest = max(versions, key=lambda row: row["version"])
    labels = sorted({label for row in versions for label in json.loads(row["labels"])})
    return {
        "name": newest["name"],
        "tags": max(json.loads(row["tags"]) for row in versions),
        "lastUpdatedAt": max(row["updated_at"] for row in versions),
        "versions": sorted(row["version"] for row in versions),
        "labels": labels,
        "type": newest["type"],
        "lastConfig": json.loads(newest["config"]),
    }


@router.post("/api/public/v2/prompts", dependencies=[Depends(require_prompts)])
def create_prompt(request: Request, body: Annotated[Any, Body()] = None) -> Response:
    """A new version: ``max + 1``, labelled ``latest``; its labels leave older versions.
    Answered 201, as Langfuse does (the spec says 200)."""
    store, settings = _context(request)
    prompt_id = create_version(store, parse_new_prompt(body))
    return JSONResponse(_prompt_json(_by_id(store, prompt_id), settings), status_code=201)


@router.patch(
    "/api/public/v2/prompts/{name:path}/versions/{version}",
    dependencies=[Depends(require_project)],
)
def update_prompt_labels(
    name: str, version: str, request: Request, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    """Add labels to one version; each leaves the other versions of the prompt."""
    store, settings = _context(request)
    issues: Issues = []
    number = _int_param({"version": version}, "version", issues)
    new_labels: list[str] = []
    if not isinstance(body, dict):
        issues.append(_type_issue([], "object", body))
    else:
        new_labels = _string_list(body.get("newLabels", MISSING), ["newLabels"], issues)
        if LATEST in new_labels:
            issues.append(
                issue(
                    "custom",
                    ["newLabels"],
                    "Label 'latest' is always assigned to the latest prompt version",
                )
            )
    if issues or number is None:
        raise invalid(issues)
    prompt_id = add_labels(store, name, number, new_labels)
    return _prompt_json(_by_id(store, prompt_id), settings)


def _name_query(request: Request) -> tuple[int | None, str | None]:
    issues: Issues = []
    version = _int_param(request.query_params, "version", issues)
    if issues:
        raise invalid(issues)
    label = request.query_params.get("label")
    if version and label:
        raise bad_request("Cannot specify both version and label")
    return version or None, label or None


@router.get("/api/public/v2/prompts/{promptName:path}", dependencies=[Depends(require_prompts)])
def get_prompt(promptName: str, request: Request) -> dict[str, Any]:  # noqa: N803
    """One version, by ``version`` or ``label`` (``production`` when neither)."""
    store, settings = _context(request)
    version, label = _name_query(request)
    if version is not None:
        rows = store.query(
            "SELECT * FROM prompts WHERE name = ? AND version = ?", [promptName, version]
        )
    else:
        rows = store.query(
            f"SELECT * FROM prompts WHERE name = ? AND {_HAS_LABEL} ORDER BY version DESC LIMIT 1",
            [promptName, label or PRODUCTION],
        )
    if not rows:
        detail = (
            f"with version {version}"
            if version is not None
            else f"with label '{label or PRODUCTION}'"
        )
        raise not_found(f"Prompt not found: '{promptName}' {detail}")
    return _prompt_json(rows[0], settings)


@router.delete("/api/public/v2/prompts/{promptName:path}", dependencies=[Depends(require_prompts)])
def delete_prompt(promptName: str, request: Request) -> Response:  # noqa: N803
    """Delete versions: the one with ``version``, every one carrying ``label``, or all."""
    store, _ = _context(request)
    version, label = _name_query(request)
    where: list[str] = ["name = ?"]
    args: list[str | int] = [promptName]
    if version is not None:
        where.append("version = ?")
        args.append(version)
    if label is not None:
        where.append(_HAS_LABEL)
        args.append(label)
    with store.transaction() as db:
        deleted = db.execute(f"DELETE FROM prompts WHERE {' AND '.join(where)}", args).rowcount
        if not deleted:
            raise not_found("Prompt not found")
    return Response(status_code=204)
