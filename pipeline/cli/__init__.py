"""The ``pipeline`` command: each subcommand turns options into arguments and calls one library function.

:mod:`pipeline.cli.base` holds the group, the shared options and the error boundary; importing the command
modules registers their commands on it."""

from pipeline.cli import runs, scheduling, serve, tools  # noqa: F401  (registers the commands)
from pipeline.cli.base import main

__all__ = ["main"]
