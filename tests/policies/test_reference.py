"""The generated field reference is current and names every field of the schema."""

from __future__ import annotations

from pathlib import Path

from policies.model import policy_json_schema
from policies.reference import reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy-reference.md"


def test_the_committed_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/policy-reference.md is stale: run "
        "python -m policies.reference --output docs/policy-reference.md"
    )


def test_every_field_of_every_object_is_in_the_reference() -> None:
    text = reference_markdown()
    schema = policy_json_schema()
    objects = [schema, *schema["$defs"].values()]
    fields = {name for node in objects for name in node.get("properties", {})}
    assert len(fields) > 40
    assert all(f"| `{name}` |" in text for name in fields)
