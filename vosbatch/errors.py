"""Errors users see. Each names the file (or sequence) and the problem, so a failed row is actionable."""


class VosbatchError(RuntimeError):
    """Base class for errors that become a ``failed`` row instead of crashing a batch."""


class InputError(VosbatchError):
    """Bad input: unreadable frame, too few frames, mismatched GT, unknown sequence..."""


class OutputError(VosbatchError):
    """The output location cannot be written."""
