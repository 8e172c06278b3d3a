"""Exceptions with messages meant for users.

Every error a user can cause (bad data, bad arguments, bad configs) is raised as a
:class:`MetarchError` subclass whose message says what is wrong, where, and how to fix it.
The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

__all__ = ["ConfigError", "DataError", "DownloadError", "EpisodeError", "MetarchError"]


class MetarchError(Exception):
    """Base class of all user-facing errors."""


class DataError(MetarchError):
    """A data set is missing, malformed, or does not match its declared layout."""


class DownloadError(DataError):
    """An archive could not be fetched (for example, no internet)."""


class ConfigError(MetarchError):
    """A configuration file or override is invalid (the message names the key)."""


class EpisodeError(MetarchError):
    """An episode request cannot be satisfied by the class pool it is drawn from."""
