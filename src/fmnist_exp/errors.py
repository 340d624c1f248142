"""Errors a user can cause and fix. The CLI prints them as one paragraph, without a traceback;
anything else is a bug and keeps its traceback."""

import unicodedata

# Characters a terminal acts on rather than shows: C0/C1 controls (ESC starts colour, cursor and
# title sequences; CR and newline fake lines) and the bidirectional overrides that reorder text.
BIDI_CONTROLS = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


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


def printable(text: str) -> str:
    """`text` safe to print to a terminal: every control character shown as its escape (\\x1b,
    \\n, \\u202e), everything else (letters of any script, emoji) as it is. For names that come
    from outside: file names, class folder names, CSV cells."""
    return "".join(
        ascii(c)[1:-1] if unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS else c
        for c in str(text)
    )


def one_paragraph(exc: BaseException) -> str:
    """The error's message on one line (runs of white space made one space), printable."""
    return printable(" ".join(str(exc).split()))
