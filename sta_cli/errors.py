"""One exception type for every problem caused by the user's input.

The CLI turns a `StaError` into one line on stderr and a non-zero exit code; anything else is a
bug and keeps its traceback.
"""


class StaError(Exception):
    """Bad input: unknown model, unreadable checkpoint or video, invalid option, unwritable output."""

    exit_code = 1


class ValidationFailed(StaError):
    """An exported or pruned model does not match its reference."""

    exit_code = 3
