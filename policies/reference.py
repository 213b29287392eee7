"""The policy field reference in Markdown, generated from the JSON Schema.

``python -m policies.reference --output docs/policy-reference.md`` writes it; a test
fails when the committed file is stale, so the reference always says what the loader
accepts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from policies.model import policy_json_schema

HEADER = (
    "# Policy field reference\n\n"
    "Generated from `policies/schema.json` by `python -m policies.reference --output "
    "docs/policy-reference.md`; do not edit. The guide with examples and the rules that "
    "involve several fields is [policy.md](policy.md).\n"
)


def _type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = defs[name]
        if "enum" in target:
            return " \\| ".join(f"`{value}`" for value in target["enum"])
        return f"[{name}](#{name.lower()})"
    if "anyOf" in node:
        kinds = [_type(choice, defs) for choice in node["anyOf"] if choice.get("type") != "null"]
        if any("const" in choice for choice in node["anyOf"]):
            kinds = [
                f"`{choice['const']}`" if "const" in choice else _type(choice, defs)
                for choice in node["anyOf"]
                if choice.get("type") != "null"
            ]
        return " or ".join(kinds)
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type(node.get('items', {}), defs)}"
    if kind == "string" and "pattern" in node and "(?:[0-9]+" in node["pattern"]:
        return "duration"
    if kind == "string" and node.get("format") == "uri":
        return "URL"
    return str(kind)


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for key, sign in (
        ("exclusiveMinimum", ">"),
        ("minimum", ">="),
        ("exclusiveMaximum", "<"),
        ("maximum", "<="),
    ):
        if key in node:
            parts.append(f"{sign} {node[key]}")
    for choice in node.get("anyOf", []):
        parts.extend(_bounds(choice).split(", ") if _bounds(choice) else [])
    return ", ".join(parts)


def _default(node: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in node or node["default"] is None:
        return "none"
    value = node["default"]
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, separators=(", ", ": ")) + "`"
    return f"`{value}`"


def _table(title: str, node: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", ""]
    if node.get("description"):
        lines += [node["description"], ""]
    lines += ["| field | type | default | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
    required = set(node.get("required", []))
    for name, field in node.get("properties", {}).items():
        meaning = " ".join(str(field.get("description", "")).split()).replace("|", "\\|")
        lines.append(
            f"| `{name}` | {_type(field, defs)} | {_default(field, name in required)} "
            f"| {_bounds(field)} | {meaning} |"
        )
    return [*lines, ""]


def reference_markdown() -> str:
    schema = policy_json_schema()
    defs: dict[str, Any] = schema["$defs"]
    lines = [HEADER, *_table("Policy", schema, defs)]
    for name in sorted(defs):
        if "properties" in defs[name]:
            lines += _table(name, defs[name], defs)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.reference")
    parser.add_argument("--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = reference_markdown()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
