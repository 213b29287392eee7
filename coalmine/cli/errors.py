"""Errors that end a command with exit status 2 and a one-line reason.

The tree, under ``coalmine.shared.errors``::

    CoalmineError
    └── PermanentError
        └── InputError        a file, flag or stream line the user gave is wrong

A command turns the errors of the packages it calls (a policy file's ``PolicyError``, a
sample stream's ``StreamError``, ...) into an ``InputError`` that says where.
"""

from __future__ import annotations

from coalmine.shared.errors import PermanentError

__all__ = ["InputError"]


class InputError(PermanentError):
    """Input the user gave is wrong: a file, a flag or a stream line.

    The message is one line that says what and where; the CLI prints it on stderr
    and exits with status 2.
    """
