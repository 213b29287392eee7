"""The `coalmine` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import sys

import typer

from coalmine.cli import backtest as backtest_commands
from coalmine.cli import controller as controller_commands
from coalmine.cli import demo as demo_commands
from coalmine.cli import emulator as emulator_commands
from coalmine.cli import policy as policy_commands
from coalmine.cli import proxy as proxy_commands
from coalmine.cli import releases as release_commands
from coalmine.cli import replay as replay_commands
from coalmine.cli.errors import InputError

EXIT_BAD_INPUT = 2

app = typer.Typer(
    name="coalmine",
    help=(
        "Canary and shadow-traffic release controller for LLM applications observed "
        "with Langfuse.\n\nExit status: 0 on success, 2 on bad input (with a one-line "
        "reason on stderr)."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(policy_commands.app, name="policy")
replay_commands.register(app)
emulator_commands.register(app)
proxy_commands.register(app)
release_commands.register(app)
controller_commands.register(app)
backtest_commands.register(app)
demo_commands.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status instead of raising SystemExit."""
    try:
        code = app(args=argv, prog_name="coalmine", standalone_mode=False)
    except InputError as error:
        print(f"coalmine: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    except (typer.Abort, KeyboardInterrupt):
        print("coalmine: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as done:
        return done.exit_code
    except Exception as usage:  # click usage errors carry their own exit code
        code = getattr(usage, "exit_code", None)
        if isinstance(code, int):
            show = getattr(usage, "show", None)
            if callable(show):
                show()
            return EXIT_BAD_INPUT if code == 2 else code
        raise
    return code if isinstance(code, int) else 0
