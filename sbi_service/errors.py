"""Errors that carry a message for the user.

A ``UserError`` is raised for anything the caller got wrong (bad input, an unknown
name, a malformed file). The CLI prints its message on one line and exits with
code 2; the API turns it into a 4xx response. Anything else is a bug.
"""


class UserError(Exception):
    """Bad input: the message says what was wrong and what to do."""

    status_code: int = 422


class NotFoundError(UserError):
    """An unknown model, version, simulator or job."""

    status_code = 404


class ForbiddenError(UserError):
    """Not allowed by the server's settings (an import path off the allowlist, ...)."""

    status_code = 403


class ModelFileError(UserError):
    """A stored model version whose files are missing, damaged or altered: never served."""

    status_code = 409


class StoreUnwritableError(UserError):
    """The store cannot be written (read-only folder, full disk): nothing was saved."""

    status_code = 503
