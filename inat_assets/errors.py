"""Every error inat-assets raises on purpose, under one base class.

Each message says what was wrong (which file, line, URL or setting) and what to do. Callers that
want to tell "our error, show the message" from "a bug, show the traceback" catch ``InatAssetsError``.
"""


class InatAssetsError(Exception):
    """Base of every deliberate inat-assets error; the message is meant for the user."""


class StorageError(InatAssetsError, RuntimeError):
    """A data directory or output path that cannot be used (missing, unwritable, full, locked)."""


class ArchiveError(InatAssetsError, RuntimeError):
    """The archive (or one of its members) cannot be used; the message says why and what to do."""


class ConversionError(InatAssetsError, RuntimeError):
    """A CSV member could not be turned into a table that may replace the previous one."""


class FetchListError(InatAssetsError, ValueError):
    """A filter that cannot be applied; the message names the setting and what to change."""


class BatchError(InatAssetsError, ValueError):
    """An image batch key or span that does not fit the stored batch layout."""


class InputError(InatAssetsError):
    """An input file of the download command that cannot be used; the message says why."""


class DownloadError(InatAssetsError, RuntimeError):
    """A download run that cannot start or finish (its output is locked, unwritable, ...)."""


class TrainingDatasetError(InatAssetsError, RuntimeError):
    """A training dataset that cannot be built from what is on disk; the message says what to do."""
