"""Errors that end a command with exit status 2 and a one-line reason."""


class InputError(Exception):
    """Input the user gave is wrong: a file, a flag or a stream line.

    The message is one line that says what and where; the CLI prints it on stderr
    and exits with status 2.
    """
