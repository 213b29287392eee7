"""The paired test on known pairs: estimate, bounds and verdict pinned as numbers.

Every expected number below was computed outside coalmine from the documented formulas:
the variance of the mean difference is ``(sum (D - mean)^2 + span^2 / 4) / n^2``, the
e-value the judge's rollback mixture (grid {0.5, 1, 2, 4, 8} x effect, weights {0.1,
0.6, 0.15, 0.1, 0.05}) and each bound the root of its mixture at log 20, found with
scipy's ``brentq``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest

from controller.judge import PairedResult, PairedSettings, PairedSums, Verdict, paired_test

SETTINGS = PairedSettings(tolerance=0.0, promote_tolerance=0.03, effect=0.05, alpha=0.05)
LOG_20 = math.log(20.0)


def sums_of(
    candidate: Sequence[float | None],
    baseline: Sequence[float | None],
    settings: PairedSettings = SETTINGS,
    unmirrored: Sequence[float | None] = (),
) -> PairedSums:
    sums = PairedSums()
    for c, b in zip(candidate, baseline, strict=True):
        sums = sums.add(c, b, settings)
    for u in unmirrored:
        sums = sums.add_unmirrored(u, settings)
    return sums


def run(
    candidate: Sequence[float | None],
    baseline: Sequence[float | None],
    settings: PairedSettings = SETTINGS,
    unmirrored: Sequence[float | None] = (),
) -> PairedResult:
    return paired_test(sums_of(candidate, baseline, settings, unmirrored), settings)


LOWER_IS_BETTER = PairedSettings(
    higher_is_better=False, tolerance=0.0, promote_tolerance=0.03, effect=0.05
)

# (id, candidate, baseline, settings, unmirrored, verdict, estimate, lower, upper, log e)
TABLE = [
    (
        "even-differences-inconclusive",
        [0.8, 0.6] * 20,
        [0.7, 0.7] * 20,
        SETTINGS,
        [],
        Verdict.INCONCLUSIVE,
        0.0,
        -0.054509475696491616,
        0.052856758480382716,
        -2.603715227038391,
    ),
    (
        "close-pairs-pass",
        [0.9, 0.8, 0.7, 0.6] * 100,
        [0.85, 0.8, 0.75, 0.6] * 100,
        SETTINGS,
        [],
        Verdict.PASS,
        0.0,
        -0.008869383323335587,
        0.01349343450622776,
        -68.96925175966064,
    ),
    (
        "regression-fails",
        [0.5, 0.7] * 50,
        [0.8, 0.8] * 50,
        SETTINGS,
        [],
        Verdict.FAIL,
        -0.2,
        -0.22951588470965734,
        -0.1671083322531849,
        157.69741490700613,
    ),
    (
        "failed-candidate-is-worst",
        [0.75, 0.85] * 20 + [None],
        [0.8, 0.8] * 20 + [0.9],
        SETTINGS,
        [],
        Verdict.INCONCLUSIVE,
        -0.021951219512195176,
        -0.09585444257105546,
        0.047903440480519026,
        -0.472713191065028,
    ),
    (
        "lower-is-better-fails-upwards",
        [0.3, 0.5] * 50,
        [0.2, 0.2] * 50,
        LOWER_IS_BETTER,
        [],
        Verdict.FAIL,
        0.2,
        0.16710833225318483,
        0.22951588470965728,
        157.69741490700596,
    ),
    (
        "control-variate",
        [0.9, 0.6, 0.8, 0.5] * 25,
        [0.8, 0.6, 0.9, 0.4] * 25,
        SETTINGS,
        [0.9, 0.3, 0.7, 0.5, 0.6] * 180,
        Verdict.PASS,
        0.04103466478972374,
        0.01786049507710243,
        0.06860195088032073,
        -20.46059762654992,
    ),
]


@pytest.mark.parametrize(
    (
        "candidate",
        "baseline",
        "settings",
        "unmirrored",
        "verdict",
        "estimate",
        "lower",
        "upper",
        "log_e",
    ),
    [pytest.param(*row[1:], id=str(row[0])) for row in TABLE],
)
def test_known_pairs_give_known_figures(  # noqa: PLR0917
    candidate: list[float | None],
    baseline: list[float | None],
    settings: PairedSettings,
    unmirrored: list[float],
    verdict: Verdict,
    estimate: float,
    lower: float,
    upper: float,
    log_e: float,
) -> None:
    result = run(candidate, baseline, settings, unmirrored)
    assert result.verdict is verdict
    assert result.pairs == len(candidate)
    assert result.estimate == pytest.approx(estimate, abs=1e-12)
    assert result.lower == pytest.approx(lower, rel=1e-9)
    assert result.upper == pytest.approx(upper, rel=1e-9)
    assert result.log_evalue == pytest.approx(log_e, rel=1e-9)
    assert result.log_threshold == pytest.approx(LOG_20)


def test_the_control_variate_weight_and_the_plain_mean_are_reported() -> None:
    result = run(
        [0.9, 0.6, 0.8, 0.5] * 25,
        [0.8, 0.6, 0.9, 0.4] * 25,
        unmirrored=[0.9, 0.3, 0.7, 0.5, 0.6] * 180,
    )
    assert result.control_weight == pytest.approx(0.2137955305296498, rel=1e-9)
    assert result.paired_mean == pytest.approx(0.025, abs=1e-12)
    assert result.unmirrored == 900
    # Without unmirrored answers the estimate is the plain paired mean.
    plain = run([0.9, 0.6, 0.8, 0.5] * 25, [0.8, 0.6, 0.9, 0.4] * 25)
    assert plain.control_weight == 0.0
    assert plain.estimate == plain.paired_mean


def test_a_failed_call_takes_the_worst_value_of_the_range_and_says_so() -> None:
    sums = PairedSums().add(None, 0.9, SETTINGS)
    assert (sums.pairs, sums.sum_d, sums.candidate_failed, sums.baseline_failed) == (1, -0.9, 1, 0)
    # Lower is better: the worst value is the top of the range.
    sums = PairedSums().add(None, 0.25, LOWER_IS_BETTER)
    assert sums.sum_d == 0.75
    ranged = PairedSettings(low=1.0, high=5.0)
    both = PairedSums().add(None, None, ranged)
    assert (both.sum_d, both.sum_b, both.candidate_failed, both.baseline_failed) == (0.0, 1.0, 1, 1)
    result = run([0.75, 0.85] * 20 + [None], [0.8, 0.8] * 20 + [0.9])
    assert result.candidate_failed == 1
    assert "1 failed candidate calls counted as the worst value" in result.reason


def test_too_few_pairs_is_nodata_never_a_pass_or_a_block() -> None:
    assert run([], []).verdict is Verdict.NODATA
    assert run([], []).estimate is None
    clear_regression = run([0.1] * 29, [0.9] * 29)
    assert clear_regression.verdict is Verdict.NODATA
    assert clear_regression.estimate == pytest.approx(-0.8)
    assert clear_regression.log_evalue > LOG_20  # the evidence is shown, not acted on
    identical = run([0.8] * 29, [0.8] * 29)
    assert identical.verdict is Verdict.NODATA
    assert run([0.8] * 400, [0.8] * 400).verdict is Verdict.PASS
    assert "29 pairs, need 30" in identical.reason


def test_values_outside_the_range_are_refused_and_counted() -> None:
    sums = sums_of([1.2, math.nan, 0.5], [0.5, 0.5, -0.1]).add_unmirrored(2.0, SETTINGS)
    assert (sums.pairs, sums.unmirrored, sums.invalid) == (0, 0, 4)


def test_the_verdict_agrees_with_the_bounds() -> None:
    """A block needs the bound on the candidate's better side beyond the tolerance (the
    whole sequence is worse), a pass the bound on its worse side inside the margin."""
    for _, candidate, baseline, settings, unmirrored, *_ in TABLE:
        assert isinstance(settings, PairedSettings)
        result = run(candidate, baseline, settings, unmirrored)  # type: ignore[arg-type]
        assert result.lower is not None and result.upper is not None
        if settings.higher_is_better:
            blocked, passed = result.upper < -settings.tolerance, result.lower > -0.03
        else:
            blocked, passed = result.lower > settings.tolerance, result.upper < 0.03
        assert blocked == (result.verdict is Verdict.FAIL)
        assert (passed and not blocked) == (result.verdict is Verdict.PASS)


def test_sums_survive_json_exactly_and_merge() -> None:
    sums = sums_of(
        [0.1 * i % 1.0 for i in range(57)] + [None],
        [0.37 * i % 1.0 for i in range(57)] + [0.2],
        unmirrored=[0.013 * i for i in range(70)] + [None],
    )
    again = PairedSums.from_dict(json.loads(json.dumps(sums.to_dict())))
    assert again == sums
    assert paired_test(again, SETTINGS) == paired_test(sums, SETTINGS)
    assert all(type(v) in (int, float) for v in sums.to_dict().values())
    half = sums_of([0.5, 0.6], [0.4, 0.6])
    assert half.merge(sums_of([0.7], [0.9])) == sums_of([0.5, 0.6, 0.7], [0.4, 0.6, 0.9])


@pytest.mark.parametrize(
    "data",
    [
        {"pairs": 1},
        {**PairedSums().to_dict(), "extra": 1},
        {**PairedSums().to_dict(), "pairs": 1.5},
        {**PairedSums().to_dict(), "sum_d": "0.1"},
        {**PairedSums().to_dict(), "pairs": True},
    ],
)
def test_malformed_sums_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PairedSums.from_dict(data)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        PairedSettings(low=1.0, high=1.0)
    with pytest.raises(ValueError):
        PairedSettings(alpha=0.0)
    with pytest.raises(ValueError):
        PairedSettings(min_pairs=1)
    assert PairedSettings(low=0.0, high=10.0).tuned_effect == 0.5
    assert PairedSettings(tolerance=0.02).promote_margin == 0.02
