"""srscreen's own errors: what the command line turns into one line and exit 2 (a bug keeps its traceback).

Torch-free, so that the command line can name them before it imports anything heavy.
"""

from __future__ import annotations


class SrscreenError(ValueError):
    """An input srscreen cannot use; the message is one line naming the file or parameter and the reason.

    Messages name parameters as a Python caller passes them, in backticks (`top`, `overwrite=True`,
    `rule='cgcnn'`); the command line shows its flag in their place (`cli.flag_text`).
    """


class OptionError(SrscreenError):
    """A parameter value srscreen cannot use (the message names the parameter)."""


class InputError(SrscreenError):
    """An input file or folder srscreen cannot use (the message names the file)."""


class ShardFileError(SrscreenError):
    """A graph file that cannot be used (missing, damaged, wrong format or schema, unfit for a model)."""


class DiskFullError(SrscreenError):
    """A file could not be written: no space left on its device (or the quota is spent). What was being
    written is removed, never left half-written; `path` is the file that was being written."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class ModelFileError(SrscreenError):
    """A model file that cannot be used; the message is one line naming the file and the reason."""


def one_line(error: object, limit: int = 300) -> str:
    """An error's message on one line, whitespace collapsed and cut at `limit` characters: what a failure
    table row or a one-line CLI error can hold."""
    return " ".join(str(error).split())[:limit]
