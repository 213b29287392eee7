"""coalmine: canary and shadow-traffic release controller for LLM applications."""
