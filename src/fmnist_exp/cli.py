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


def whole_number(prog: str, key: str, value: str, minimum: int, maximum: int | None = None) -> int:
    """`key=value` as a whole number in [minimum, maximum], else a UserError naming the key."""
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise UserError(f"{prog}: {key}={value!r} must be a whole number {bound}.")
    return number


def run(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """main's exit code (an int it returns, else 0), or 2 with `error: <one paragraph>` for a
    UserError (no traceback)."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {one_paragraph(exc)}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) and not isinstance(code, bool) else 0
