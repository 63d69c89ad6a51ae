"""The project's own error type: a failure the user can fix, with a message that says how."""


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
