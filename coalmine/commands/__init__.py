"""Subcommands of the `coalmine` CLI, one module each."""
