"""The chart's README.md is the one scripts/chart-readme.py writes (helm-docs' layout,
from Chart.yaml and the `# --` comments of values.yaml), and its values table has a row
for every value."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "chart-readme.py"
CHART = ROOT / "charts" / "coalmine"


@pytest.fixture(scope="module")
def chart_readme() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_readme", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def table(text: str) -> dict[str, list[str]]:
    """The values table of a README: key -> [type, default, description]."""
    section = text.split("## Values\n", 1)[1]
    found: dict[str, list[str]] = {}
    for line in section.splitlines()[3:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        found[cells[0]] = cells[1:]
    return found


def test_the_committed_readme_is_current(chart_readme: ModuleType) -> None:
    assert (CHART / "README.md").read_text(encoding="utf-8") == chart_readme.readme(CHART), (
        "charts/coalmine/README.md is stale: run python scripts/chart-readme.py"
    )


def test_check_mode_fails_on_a_stale_readme(chart_readme: ModuleType, tmp_path: Path) -> None:
    copy = tmp_path / "coalmine"
    shutil.copytree(CHART, copy)
    assert chart_readme.main(["--chart", str(copy), "--check"]) == 0
    with (copy / "values.yaml").open("a", encoding="utf-8") as values:
        values.write("# -- A value added without regenerating the README.\nextra: 1\n")
    assert chart_readme.main(["--chart", str(copy), "--check"]) == 1
    assert chart_readme.main(["--chart", str(copy)]) == 0
    assert chart_readme.main(["--chart", str(copy), "--check"]) == 0
    assert table((copy / "README.md").read_text())["extra"] == [
        "int",
        "`1`",
        "A value added without regenerating the README.",
    ]


def test_the_readme_has_helm_docs_layout() -> None:
    text = (CHART / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert text.startswith(f"# {meta['name']}\n\n![Version: {meta['version']}](")
    assert f"![Type: {meta['type']}](" in text
    assert f"![AppVersion: {meta['appVersion']}](" in text
    assert meta["description"] in text
    assert f"## Requirements\n\nKubernetes: `{meta['kubeVersion']}`" in text
    assert "| Key | Type | Default | Description |\n|-----|------|---------|-------------|" in text
    keys = list(table(text))
    assert keys == sorted(keys)


def leaves(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key path of every leaf value (empty maps included)."""
    found: list[tuple[str, ...]] = []
    for key, value in node.items():
        path = (*prefix, str(key))
        found += leaves(value, path) if isinstance(value, dict) and value else [path]
    return found


def helm_docs_key(path: tuple[str, ...]) -> str:
    return ".".join(f'"{part}"' if "." in part or " " in part else part for part in path)


def test_every_value_has_a_described_row_or_a_described_ancestor_row() -> None:
    rows = table((CHART / "README.md").read_text(encoding="utf-8"))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    found = leaves(defaults)
    assert len(found) > 50
    for leaf in found:
        covering = [helm_docs_key(leaf[:i]) for i in range(len(leaf), 0, -1)]
        row = next((rows[k] for k in covering if k in rows), None)
        assert row is not None, f"{leaf} has no row"
        assert row[2], f"{leaf}: its row has no description"
    assert rows["mode"][:2] == ["string", '`"sidecar"`']
    assert rows["app.image.tag"][1] == '`""`'
    assert rows["coalmine.nativeSidecar"][:2] == ["bool", "`false`"]
    assert rows["gatewayApi.httpRoutes"][:2] == ["list", "`[]`"]


def test_rows_follow_helm_docs_rules(chart_readme: ModuleType) -> None:
    values = textwrap.dedent(
        """\
        # A plain comment is not a description.
        plain: 1
        # -- A documented map: one row with its whole default.
        probe:
          httpGet:
            # -- A described child still gets its row.
            path: /healthz
            port: 8080
        undocumented:
          # -- Half a second.
          ratio: 0.5
          # -- (int) Nothing by default,
          # continued on the next line.
          limit:
          whole: 2.0
        annotations:
          # -- Keys with dots are quoted.
          example.com/team: llm
        # -- Shown as text.
        # @default -- the example, see values.yaml
        example: {a: "<b> & c"}
        """
    )
    rows = {
        r.key: r
        for r in chart_readme.rows(yaml.safe_load(values), chart_readme.descriptions(values))
    }
    assert list(rows) == sorted(rows)
    assert rows["plain"].description == "" and rows["plain"].default == "`1`"
    assert rows["probe"].default == '`{"httpGet":{"path":"/healthz","port":8080}}`'
    assert rows["probe"].type == "object"
    assert rows["probe.httpGet.path"].description == "A described child still gets its row."
    assert "probe.httpGet.port" not in rows
    assert rows["undocumented.ratio"].type == "float"
    assert rows["undocumented.limit"].type == "int"
    assert rows["undocumented.limit"].default == "`nil`"
    assert (
        rows["undocumented.limit"].description == "Nothing by default, continued on the next line."
    )
    assert rows["undocumented.whole"].default == "`2`"
    assert rows['annotations."example.com/team"'].default == '`"llm"`'
    assert rows["example"].default == "the example, see values.yaml"
    assert chart_readme.go_json({"a": "<b> & c"}) == '{"a":"\\u003cb\\u003e \\u0026 c"}'
