"""User-facing errors.

Every error a user can cause (bad input, wrong machine, failed gate) is a :class:`QfleetError`.
The command line prints it as one line -- what was wrong, with which input, and what to do --
and exits non-zero without a traceback (unless ``--debug``). Anything else is a bug.
"""

from __future__ import annotations


class QfleetError(Exception):
    """An error caused by the user's input or environment, explained in one line."""

    #: Process exit status for this kind of error.
    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InputError(QfleetError):
    """A file, directory or argument given by the user is missing, unreadable or malformed."""


class ConversionError(QfleetError):
    """The source model could not be converted to OpenVINO IR."""


class QuantizationError(QfleetError):
    """NNCF could not quantize the model."""


class IsaMismatchError(QfleetError):
    """The host's ISA tier is not the tier the work is meant for."""

    exit_code = 3


class DatasetError(InputError):
    """A face dataset (lfw.bin, pairs.txt, image folder) is malformed."""
