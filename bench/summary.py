"""Write docs/benchmarks.md from the latest benchmark outputs in bench/out/.

python -m bench.summary [--out bench/out] [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NEUTRAL_OR_GOOD = ("neutral", "neutral-drift", "neutral-noisy-judge", "good", "late-scores")
TRAFFICS = (("1090", "10 canary / 90 baseline traces a minute"), ("5050", "50 / 50"))


def _load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _rows(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["scenario"], row["method"]): row for row in data["rows"]}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _minutes(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def goals(data: dict[str, Any]) -> list[str]:
    """The issue's goals for coalmine, with what was measured."""
    rows = _rows(data)

    def row(scenario: str) -> dict[str, Any]:
        return rows[(scenario, "coalmine")]

    frr = {s: row(s)["rollback"] for s in NEUTRAL_OR_GOOD if (s, "coalmine") in rows}
    frr_heavy = row("cost-heavy-tail")["rollback"]
    worst = max(frr.items(), key=lambda item: item[1])
    bad = row("bad")
    very_bad = row("very-bad")
    srm = row("srm-coverage")
    lost = row("srm-lost")
    none = row("no-scores")
    lines = [
        "| goal | measured | met |",
        "| --- | --- | --- |",
        f"| false rollbacks <= 5% on neutral, drift, noisy judge, good, late scores | "
        f"highest {_pct(worst[1])} ({worst[0]}) | {'yes' if worst[1] <= 0.05 else 'no'} |",
        f"| ... and with heavy-tailed cost (scores neutral) | {_pct(frr_heavy)} | "
        f"{'yes' if frr_heavy <= 0.05 else 'no'} |",
        f"| bad detected in >= 95% of runs | {_pct(bad['rollback'])} | "
        f"{'yes' if bad['rollback'] >= 0.95 else 'no'} |",
        f"| bad: median minutes to rollback <= 17 | "
        f"{_minutes(bad['rollback_minutes_median'])} | "
        f"{'yes' if (bad['rollback_minutes_median'] or 999) <= 17 else 'no'} |",
        f"| very bad: median minutes to rollback <= 5 | "
        f"{_minutes(very_bad['rollback_minutes_median'])} | "
        f"{'yes' if (very_bad['rollback_minutes_median'] or 999) <= 5 else 'no'} |",
        f"| sample-ratio mismatch paused, never promoted, >= 99% (scores lost) | "
        f"paused {_pct(srm['pause'])}, promoted {_pct(srm['promote'])} | "
        f"{'yes' if srm['pause'] >= 0.99 and srm['promote'] == 0 else 'no'} |",
        f"| ... traces lost whole (see the note below) | paused {_pct(lost['pause'])}, "
        f"promoted {_pct(lost['promote'])} | {'yes' if lost['pause'] >= 0.99 else 'no'} |",
        f"| zero promotions when the canary has no scores | promoted {_pct(none['promote'])} | "
        f"{'yes' if none['promote'] == 0 else 'no'} |",
    ]
    return lines


def comparison(data: dict[str, Any]) -> list[str]:
    """Per scenario and method: rollback rate and median minutes; coalmine's other outcomes."""
    rows = _rows(data)
    methods = list(dict.fromkeys(row["method"] for row in data["rows"]))
    scenarios = list(dict.fromkeys(row["scenario"] for row in data["rows"]))
    head = "| scenario | " + " | ".join(methods) + " | coalmine: promote / pause (median min) |"
    lines = [head, "|" + " --- |" * (len(methods) + 2)]
    for scenario in scenarios:
        cells = []
        for method in methods:
            row = rows.get((scenario, method))
            if row is None:
                cells.append("")
                continue
            median = row["rollback_minutes_median"]
            cells.append(_pct(row["rollback"]) + ("" if median is None else f" ({median:.0f})"))
        ours = rows.get((scenario, "coalmine"))
        extra = ""
        if ours is not None:
            extra = (
                f"{_pct(ours['promote'])} ({_minutes(ours['promote_minutes_median'])}) / "
                f"{_pct(ours['pause'])}"
            )
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {extra} |")
    return lines


def efficiency(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["rows"] if r["efficiency"] is not None and r["method"] != "oracle-sprt"]
    lines = [
        "| scenario | method | efficiency (oracle mean minutes / method mean minutes) |",
        "| --- | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| {row['scenario']} | {row['method']} | {row['efficiency']:.2f} |")
    return lines


def replay_speed(data: dict[str, Any]) -> list[str]:
    lines = [
        f"Command: `{data['command']}` (Python {data['python']}, {data['cpus']} CPUs)",
        "",
        "| measurement | lines | looks | seconds | lines/s | x reference | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    reference = data["measurements"][0]["seconds"]
    for m in data["measurements"]:
        looks = "" if m["looks"] is None else f"{m['looks']:,}"
        lines.append(
            f"| {m['name']} | {m['lines']:,} | {looks} | {m['seconds']:.2f} | "
            f"{m['lines_per_second']:,.0f} | {m['seconds'] / reference:.1f} | "
            f"{m['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"1,000,000 lines take {data['projected_seconds_per_million_lines']:.1f} s "
        f"(target: at most {data['target_seconds_per_million_lines']:.0f} s).",
    ]
    return lines


NOTES = """\
Notes on the goals not met:

- **bad, median minutes.** The goal of 17 minutes is what a Pocock boundary reaches, and
  a Pocock boundary is valid only for the number of looks planned in advance; the issue
  also asks for a rollback rate that holds however often the judge looks, which rules it
  out. The oracle SPRT, which knows the effect and the noise, needs a median of 16 here
  with the same score delays. coalmine's mixture test pays for not knowing the effect
  (about half a nat for the mixture and a fifth for sharing alpha with the error rate):
  efficiency 0.80 against the oracle, at the top of the 0.6 to 0.8 that composite
  sequential tests reach.
- **traces lost whole.** Losing 10% of the traces of a 10-trace-a-minute canary shifts
  its share of traffic by about 2 standard errors by the time a good canary is promoted
  (49 minutes, median) and 3.3 after two hours: a sample-ratio test that pauses a healthy
  release at most 0.1% of the time cannot see it in time. In coalmine the proxy records
  every request as a trace, so a crash shows as an error and untraced app work as
  missing scores, which the coverage guard catches (the row above it: paused in every
  run, promoted in none).
"""


def sampled_goals(data: dict[str, Any]) -> list[str]:
    """Issue 15's goals for decision quality with sampled reads."""
    rows = _rows(data)
    neutral = {
        row["scenario"]: row["rollback"]
        for (_, method), row in rows.items()
        if method == "coalmine" and row["truth"] == "neutral"
    }
    worst = max(neutral.items(), key=lambda item: item[1])
    bad = rows[("bad", "coalmine")]
    median = bad["rollback_minutes_median"]
    return [
        "| goal | measured | met |",
        "| --- | --- | --- |",
        f"| false rollbacks <= 5% on every neutral case ({', '.join(neutral)}) | "
        f"highest {_pct(worst[1])} ({worst[0]}) | {'yes' if worst[1] <= 0.05 else 'no'} |",
        f"| bad caught in >= 95% of runs | {_pct(bad['rollback'])} | "
        f"{'yes' if bad['rollback'] >= 0.95 else 'no'} |",
        f"| bad: median minutes to rollback <= 9 | {_minutes(median)} | "
        f"{'yes' if median is not None and median <= 9 else 'no'} |",
    ]


def _outcomes(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    rollback = _pct(row["rollback"])
    if row["rollback_minutes_median"] is not None:
        rollback += f" ({row['rollback_minutes_median']:.0f})"
    promote = _pct(row["promote"])
    if row["promote_minutes_median"] is not None:
        promote += f" ({row['promote_minutes_median']:.0f})"
    return f"{rollback} / {promote} / {_pct(row['pause'])}"


def sampled_against_full(sampled: dict[str, Any], full: dict[str, Any]) -> list[str]:
    """coalmine's outcomes per scenario, with sampled reads and with every trace read."""
    ours, theirs = _rows(sampled), _rows(full)
    lines = [
        "| scenario | sampled reads: rollback / promote / pause | every trace read (50 / 50) |",
        "| --- | --- | --- |",
    ]
    for scenario in dict.fromkeys(row["scenario"] for row in sampled["rows"]):
        lines.append(
            f"| {scenario} | {_outcomes(ours.get((scenario, 'coalmine')))} "
            f"| {_outcomes(theirs.get((scenario, 'coalmine')))} |"
        )
    return lines


def sampled_section(out: Path) -> list[str]:
    """Decision quality with sampled reads, from ``<out>/sampled``."""
    data = _load(out / "sampled" / "decision_quality.json")
    if data is None:
        return []
    per_arm = data["traffic"].split("/")[0]
    parts = [
        "## Decision quality with sampled reads",
        "",
        f"Command: `{data['command']}`; {data['runs']} runs per scenario, "
        f"{data['minutes']} one-minute looks, wall time {data['wall_seconds']:.0f} s.",
        f"{data['sampled_from']:,} requests a minute in all, half to each arm; the proxies",
        f"count every one, and {per_arm} traces a minute per arm are their score sample (the",
        "traces of the 50 / 50 run, seed for seed). coalmine judges with traffic from the",
        "proxies: traffic, errors and latency from the counts, scores and cost from the",
        "sample. The other methods see the sampled traces only, as they did: their rows are",
        "those of the 50 / 50 table.",
        "",
        *sampled_goals(data),
        "",
        "Cells: share of runs rolled back (median minutes to rollback). The last column:",
        "coalmine's promotions (median minutes) and pauses.",
        "",
        *comparison(data),
        "",
    ]
    full = _load(out / "5050" / "decision_quality.json")
    if full is not None:
        parts += [
            "coalmine with sampled reads next to coalmine reading every trace at 50 / 50",
            "(median minutes in brackets):",
            "",
            *sampled_against_full(data, full),
            "",
        ]
    return parts


def _own_report(path: Path) -> list[str]:
    """A benchmark's own Markdown report, one heading level down; nothing if absent."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return ["#" + line if line.startswith("#") else line for line in lines] + [""]


def render(out: Path) -> str:
    parts = [
        "# Benchmarks",
        "",
        "Made by `scripts/bench.sh`, which runs the commands named below and then",
        "`python -m bench.summary` to write this page. Methods, scenarios and the",
        "benchmark policy: `bench/README.md`; the judge: [judge.md](judge.md).",
        "",
    ]
    main = _load(out / "1090" / "decision_quality.json")
    if main is not None:
        parts += ["## Goals (10/90 traffic)", "", *goals(main), "", NOTES]
    for folder, label in TRAFFICS:
        data = _load(out / folder / "decision_quality.json")
        if data is None:
            continue
        parts += [
            f"## Decision quality, {label}",
            "",
            f"Command: `{data['command']}`; {data['runs']} runs per scenario, "
            f"{data['minutes']} one-minute looks, wall time {data['wall_seconds']:.0f} s.",
            "Cells: share of runs rolled back (median minutes to rollback). The last",
            "column: coalmine's promotions (median minutes) and pauses.",
            "",
        ]
        parts += [*comparison(data), "", *efficiency(data), ""]
    parts += sampled_section(out)
    speed = _load(out / "replay_speed.json")
    if speed is not None:
        parts += ["## Replay speed", "", *replay_speed(speed), ""]
    for report in (
        "emulator_speed.md",
        "proxy_speed.md",
        "proxy_capacity.md",
        "proxy_instructions.md",
        "transport_choice.md",
        "controller_speed.md",
        "controller_memory.md",
        "controller_memory_proxies.md",
        "sampled_reads.md",
        "scale.md",
        "paired_shadow.md",
        "cluster_speed.md",
        "gateway_rollback.md",
        "span_export.md",
        "notify_queue.md",
    ):
        parts += _own_report(out / report)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    args.doc.write_text(render(args.out))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
