"""The paired shadow and dataset-gate benchmark keeps working, at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench import paired_shadow


def test_scores_follow_the_scenario_beta() -> None:
    z = np.linspace(-3.0, 3.0, 13)
    mean = np.full(z.size, 0.70)
    a, b = 0.7 * (0.7 * 0.3 / 0.0625 - 1.0), 0.3 * (0.7 * 0.3 / 0.0625 - 1.0)
    assert (a, b) == pytest.approx((1.652, 0.708))
    expected = scipy_stats.beta.ppf(scipy_stats.norm.cdf(z), a, b)
    assert paired_shadow.beta_scores(mean, z) == pytest.approx(expected, abs=2e-4)


def test_pairs_correlate_as_asked() -> None:
    rng = np.random.default_rng(5)
    candidate, baseline = paired_shadow._pair_scores(rng, np.full(100_000, 0.75), 0.0, 0.5)
    assert float(np.corrcoef(candidate, baseline)[0, 1]) == pytest.approx(0.5, abs=0.01)
    assert float(candidate.mean()) == pytest.approx(0.75, abs=0.003)
    assert float(candidate.std()) == pytest.approx(0.25, abs=0.003)


def test_a_tiny_run_writes_every_cell_and_is_seeded(tmp_path: Path) -> None:
    args = ["--runs", "3", "--unpaired-runs", "1", "--dataset-runs", "4", "--workers", "1"]
    assert paired_shadow.main([*args, "--out", str(tmp_path / "a")]) == 0
    data = json.loads((tmp_path / "a" / "paired_shadow.json").read_text())
    shadow = data["shadow"]
    cells = {(r["scenario"], r["rho"], r["method"]) for r in shadow}
    for scenario in paired_shadow.SHADOW_SCENARIOS:
        for rho in paired_shadow.RHOS:
            for method in ("paired-100", "paired-10", "paired-10-cv"):
                assert (scenario.name, rho, method) in cells
        for method in ("canary-50/50", "canary-10/90"):
            assert (scenario.name, paired_shadow.UNPAIRED_RHO, method) in cells
    assert all(r["runs"] == 3 for r in shadow if r["method"].startswith("paired"))
    regression = [r for r in shadow if r["scenario"] == "regression"]
    assert all(r["block"] == 1.0 for r in regression if r["method"] == "paired-100")
    gate = data["dataset_gate"]
    assert len(gate) == len(paired_shadow.GATE_SIZES) * len(paired_shadow.GATE_SHIFTS) * 3
    text = (tmp_path / "a" / "paired_shadow.md").read_text()
    assert "| goal | measured | met |" in text
    assert "naive blocked" in text
    assert paired_shadow.main([*args, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "paired_shadow.json").read_text())
    assert again["shadow"] == shadow
    assert again["dataset_gate"] == gate
