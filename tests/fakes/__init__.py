"""Stand-ins for what cannot run here, for the tests and benchmarks only (never shipped)."""
