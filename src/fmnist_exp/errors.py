"""Errors a user can cause and fix. The CLI prints them as one paragraph, without a traceback;
anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input: a config value, a data file, a model URI. The message says what and how to fix it."""


class ConfigError(UserError):
    """A config value that cannot work (names the key)."""


class DataError(UserError):
    """Missing, corrupt or malformed data (names the file, and the row where there is one)."""
