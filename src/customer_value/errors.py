"""Errors a user can fix. Entry points print them as one line and exit non-zero, with no traceback."""


class UserError(Exception):
    """Bad input or configuration: the message alone must tell the user what to fix."""


class DataError(UserError):
    """The transactions file cannot be used; the message names file, column and row count."""


class ModelFitError(UserError):
    """A model cannot be fitted to this data (no convergence, nothing to fit)."""


class RegistryError(UserError):
    """The model registry does not hold what a job needs (e.g. no champion yet)."""


class NotEnoughDataError(ModelFitError):
    """The data cannot support the model at all (e.g. no repeat buyers): no fallback will help."""


class ServerError(UserError):
    """The tracking server or its database cannot be started or stopped; the message says what to fix."""
