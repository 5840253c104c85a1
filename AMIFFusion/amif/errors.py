"""One exception type for every user-facing error: a clear message, never a traceback."""


class AMIFError(ValueError):
    """Bad input or a failed check; the message is meant for the user as it is."""


class Cancelled(Exception):
    """Raised when the user cancels a long operation through the progress callback."""
