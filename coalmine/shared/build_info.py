"""What ``coalmine_build_info`` says of a running controller or proxy."""

from __future__ import annotations

import importlib.metadata
import platform


def build_labels() -> dict[str, str]:
    """The labels of ``coalmine_build_info``: coalmine's version and Python's."""
    try:
        version = importlib.metadata.version("coalmine")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        version = "unknown"
    return {"version": version, "python_version": platform.python_version()}
