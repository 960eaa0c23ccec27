"""Errors a user can cause, each with a message meant for them (the CLI and API show it)."""


class UserError(Exception):
    """Bad input or a request that cannot be done now; nothing was written."""

    status_code = 400


class NotFound(UserError):
    status_code = 404


class Conflict(UserError):
    status_code = 409


class Invalid(UserError):
    status_code = 422
