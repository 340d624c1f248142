"""key=value command lines for the small tools (report, predict, serve, register), Hydra-style
without Hydra: a fixed set of keys with defaults; anything else is a one-paragraph error."""

import sys
from collections.abc import Callable

from fmnist_exp.errors import UserError, one_paragraph


def parse(prog: str, argv: list[str], defaults: dict[str, str], example: str) -> dict[str, str]:
    options = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            raise UserError(
                f"{prog}: unknown argument {arg!r}; use key=value with key one of "
                f"{', '.join(options)} (e.g. {example})."
            )
        options[key] = value
    return options


def run(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 with `error: <one paragraph>` for a UserError (no traceback)."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {one_paragraph(exc)}", file=sys.stderr)
        return 2
    return 0
