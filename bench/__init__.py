"""Seeded decision-quality benchmark for canary judges.

``bench.scenarios`` generates synthetic releases with known truth, ``bench.baselines`` holds the
incumbents' decision rules and an oracle SPRT, and ``bench.harness`` runs every method over the
same seeded runs and reports rollback / promote rates and times to decision.
"""
