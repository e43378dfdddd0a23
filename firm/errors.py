"""FIRM's exception hierarchy. Every error a user can cause derives from `FirmError`; the CLI turns these into
one clear line on stderr and a non-zero exit instead of a traceback."""

from __future__ import annotations


class FirmError(Exception):
    """Base class for errors caused by input, configuration or the environment (not by bugs)."""


class ConfigError(FirmError):
    """A configuration value or recipe is invalid."""


class InputError(FirmError):
    """A user-supplied input (image, text, record, file) is invalid."""


class StorageError(FirmError):
    """An object-store operation failed; the message names the URI."""


class MissingBucketError(StorageError):
    """The S3 bucket a URI names does not exist (a run that writes there creates it; a reader finds nothing)."""


class ParseError(FirmError):
    """A critic's text could not be turned into a score and the policy says to raise."""
