"""The project's own error type: a failure the user can fix, with a message that says how."""


def error_line(exc: BaseException, limit: int = 200) -> str:
    """'TypeName: the first line of its message', cut to limit: the cause inside a one-line message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}"


class LabError(Exception):
    """An error caused by input or environment; its message is shown to the user as-is."""


class OfflineError(LabError):
    """Something must be downloaded but the network is unreachable."""


class DataError(LabError):
    """A dataset source is missing, empty or malformed."""


class ImageError(LabError):
    """An image cannot be decoded or is unsafe to decode."""


class ModelFileError(LabError):
    """A model file is missing, malformed, incompatible or unsafe to load."""


class StopRequested(Exception):
    """Raised inside training when the caller asked to stop; never shown to users."""
