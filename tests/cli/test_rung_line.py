"""What `coalmine status` says of a rollout's ladder and the rung it stands at."""

from __future__ import annotations

from typing import Any

from coalmine.cli.releases import _time, rung_line

AT = 1_800_000_000.0


def detail(**changes: Any) -> dict[str, Any]:
    return {"name": "support", "phase": "canary", "ladder": ["canary"], **changes}


def test_a_release_without_rungs_has_no_ladder_line() -> None:
    assert rung_line(detail()) is None
    assert rung_line(detail(ladder=None)) is None


def test_a_ladder_past_its_rungs_is_listed() -> None:
    line = rung_line(detail(ladder=["dataset", "shadow", "canary", "approval"]))
    assert line == "ladder: dataset → shadow → canary → approval"


def test_the_rung_a_rollout_stands_at_says_what_it_found_and_which_items_lack_scores() -> None:
    rung = {
        "rung": "dataset",
        "outcome": None,
        "reason": "dataset golden: 12 of 60 items run",
        "unscored": {"count": 3, "itemIds": ["item-1", "item-7"], "reasons": {}},
    }
    line = rung_line(detail(phase="dataset", ladder=["dataset", "canary"], rung=rung, rungSince=AT))
    assert line == (
        f"ladder: dataset → canary; dataset rung since {_time(AT)}, running: dataset golden: "
        "12 of 60 items run\nunscored items: 3 (item-1, item-7 and 1 more)"
    )


def test_a_shadow_rung_shows_its_outcome() -> None:
    rung = {"rung": "shadow", "outcome": "blocked", "reason": "worse by 0.3"}
    line = rung_line(detail(phase="shadow", ladder=["shadow", "canary"], rung=rung, rungSince=AT))
    assert line is not None and line.endswith(
        "shadow rung since " + _time(AT) + ", blocked: worse by 0.3"
    )
