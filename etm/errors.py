"""Errors the domain raises. Each carries a message a person can act on.

The API maps them to RFC 9457 problem+json, the CLI to exit code 2.
"""


class BadInput(ValueError):
    """The caller gave something we cannot use (a file, a parameter, a dataset)."""

    title = "Bad input"


class ModelRefused(BadInput):
    """An uploaded model file is not one we will load (unsafe or malformed)."""

    title = "Model refused"


class DatasetError(BadInput):
    """A dataset cannot be read as a whole (individual bad images are skipped, not raised)."""

    title = "Bad dataset"


class MethodUnavailable(BadInput):
    """The salience method cannot run on this model; the capability table says why."""

    title = "Salience method unavailable"


class UploadTooLarge(BadInput):
    """An upload or archive is over a configured limit (HTTP 413)."""

    title = "Upload too large"
    status = 413


class UnsupportedMedia(BadInput):
    """An upload is not of an accepted kind (HTTP 415)."""

    title = "Unsupported media type"
    status = 415


class ModelRuntimeError(RuntimeError):
    """The model misbehaved while running (NaN/Inf output, wrong shape)."""

    title = "Model failed while running"


class Canceled(Exception):
    """The job was canceled; raised between batches."""
