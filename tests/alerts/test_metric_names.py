"""Every metric a live controller and proxy export is named by the Prometheus naming guide
(https://prometheus.io/docs/practices/naming/): base units (seconds, bytes, ratios from
0 to 1, never percent or milliseconds), the unit last, ``_total`` on counters and only
on them, ``_info`` series that are 1, and a ``coalmine_build_info`` in every process."""

from __future__ import annotations

import re

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

NOT_BASE_UNITS = frozenset(
    {
        "percent",
        "percentage",
        "ms",
        "millis",
        "milliseconds",
        "us",
        "microseconds",
        "minute",
        "minutes",
        "hour",
        "hours",
        "kb",
        "mb",
        "kilobytes",
        "megabytes",
    }
)
BASE_UNITS = frozenset({"seconds", "bytes", "ratio"})
TERMS = ("sample_ratio_mismatch",)
"""Words that name a thing, not a unit: the judge's sample-ratio-mismatch check."""
KEPT = {
    "coalmine_seconds_since_last_poll": "its unit first; the guide's form is already "
    "exported (time() - coalmine_last_successful_poll_timestamp_seconds)",
    "coalmine_langfuse_requests_needed_per_minute": "a rate a minute, compared with "
    "COALMINE_REQUESTS_PER_MINUTE",
    "coalmine_langfuse_request_budget_per_minute": "COALMINE_REQUESTS_PER_MINUTE itself",
}
"""Names that break a rule here and stay, because users' alerts read them: why each."""
HISTOGRAM_SAMPLES = ("_bucket", "_sum", "_count")


def _families(expositions: list[str]) -> list[Metric]:
    """Every family, but the creation times prometheus_client adds to its counters and
    histograms (``<name>_created``)."""
    found = [f for text in expositions for f in text_string_to_metric_families(text)]
    measured = {f.name for f in found if f.type in ("counter", "histogram")}
    return [f for f in found if not (f.name.endswith("_created") and f.name[:-8] in measured)]


def _name_words(family: Metric) -> list[str]:
    """The words of the name a series carries (a counter's with its ``_total``)."""
    name = f"{family.name}_total" if family.type == "counter" else family.name
    for term in TERMS:
        name = name.replace(term, term.replace("_", ""))
    return name.split("_")


def test_the_check_sees_every_kind_of_metric(expositions: list[str]) -> None:
    types = {family.type for family in _families(expositions)}
    assert types >= {"counter", "gauge", "histogram"}
    assert len(_families(expositions)) > 60


def test_no_percent_and_no_unit_but_base_units(expositions: list[str]) -> None:
    for family in _families(expositions):
        if family.name in KEPT:
            continue
        wrong = set(_name_words(family)) & NOT_BASE_UNITS
        assert not wrong, f"{family.name}: {wrong} is not a base unit (seconds, bytes, ratio)"


def test_the_unit_comes_last(expositions: list[str]) -> None:
    for family in _families(expositions):
        if family.name in KEPT:
            continue
        words = _name_words(family)
        if words[-1] == "total":
            words = words[:-1]
        units = [index for index, word in enumerate(words) if word in BASE_UNITS]
        assert units in ([], [len(words) - 1]), f"{family.name}: the unit is not last"


def test_counters_and_only_counters_end_in_total(expositions: list[str]) -> None:
    for family in _families(expositions):
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name == f"{family.name}_total", sample.name
            else:
                assert not sample.name.endswith("_total"), f"{sample.name} is a {family.type}"
            if family.type == "histogram":
                assert sample.name.endswith(HISTOGRAM_SAMPLES), sample.name


def test_info_series_are_1(expositions: list[str]) -> None:
    infos = [family for family in _families(expositions) if family.name.endswith("_info")]
    assert {family.name for family in infos} >= {
        "coalmine_build_info",
        "coalmine_proxy_worker_info",
    }
    for family in infos:
        assert family.type in ("gauge", "info"), family.name
        assert family.samples, f"{family.name} has no series"
        for sample in family.samples:
            assert sample.value == 1.0, f"{sample.name}{sample.labels} is {sample.value}"
            assert sample.labels, f"{sample.name} says nothing in labels"


def test_every_process_says_its_build(expositions: list[str]) -> None:
    for text in expositions:
        (build,) = [
            f for f in text_string_to_metric_families(text) if f.name == "coalmine_build_info"
        ]
        (sample,) = build.samples
        assert set(sample.labels) == {"version", "python_version"}
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", sample.labels["version"])
        assert re.fullmatch(r"3\.\d+\.\d+.*", sample.labels["python_version"])


def test_shares_are_ratios_from_0_to_1(expositions: list[str]) -> None:
    shares = [
        family
        for family in _families(expositions)
        if family.name.endswith("_ratio") and "difference" not in family.name
    ]
    assert {family.name for family in shares} >= {
        "coalmine_release_canary_weight_ratio",
        "coalmine_proxy_canary_weight_ratio",
    }
    for family in shares:
        assert family.samples, f"{family.name} has no series"
        for sample in family.samples:
            assert 0.0 <= sample.value <= 1.0, f"{sample.name}{sample.labels} is {sample.value}"


@pytest.mark.parametrize("name", sorted(KEPT))
def test_the_names_kept_are_still_exported(name: str, expositions: list[str]) -> None:
    """So that the exceptions are dropped here when the names go."""
    assert name in {family.name for family in _families(expositions)}
