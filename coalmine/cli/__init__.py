"""The `coalmine` command line: ``main`` and one module per subcommand."""

from coalmine.cli.main import app, main

__all__ = ["app", "main"]
