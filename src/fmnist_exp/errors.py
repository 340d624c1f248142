"""Errors a user can cause and fix. The CLI prints them as one paragraph, without a traceback;
anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input: a config value, a data file, a model URI. The message says what and how to fix it."""


class ConfigError(UserError):
    """A config value that cannot work (names the key)."""


class DataError(UserError):
    """Missing, corrupt or malformed data (names the file, and the row where there is one)."""


def user_error(exc: BaseException | None) -> BaseException | None:
    """The error to show a user behind `exc`, looking through Hydra's and Lightning's wrapping:
    ours first, then Lightning's configuration errors (e.g. no GPU), then Hydra's instantiation
    errors (e.g. an unknown Trainer argument). None means a bug: keep the traceback."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for kinds in ((UserError, MisconfigurationException), InstantiationException):
        if found := next((e for e in chain if isinstance(e, kinds)), None):
            return found
    return None


def one_paragraph(exc: BaseException) -> str:
    return " ".join(str(exc).split())
