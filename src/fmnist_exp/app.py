"""What every command-line app shares. Each one (train, eval, predict, serve, report, register) is
a Hydra app with its own primary config in conf/ (`conf/<app>.yaml`), so every command line takes
the same KEY=VALUE overrides and `--help` lists the app's options.

Exit codes, the same for every app: 0 done; 2 bad input (a value our checks refuse, or a command
line Hydra cannot parse), printed as one paragraph without a traceback; 1 an app's own partial
failure (predict: some pictures unreadable); anything else is a bug and keeps its traceback.
"""

import logging
import sys
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fmnist_exp import checks
from fmnist_exp.errors import UserError, one_paragraph
from fmnist_exp.paths import config_dir, register_resolvers


def hydra_app(name: str, body: Callable[[DictConfig], object]) -> Callable[..., int]:
    """`main(argv=None) -> exit code` for `python -m fmnist_exp.<name>`: Hydra composes
    conf/<name>.yaml with the overrides in argv (default: sys.argv[1:]) and `body` runs on it; an
    int that body returns is the exit code, anything else means 0.
    main() can be called in-process (tests do): it leaves sys.argv, logging and Hydra's
    global state as it found them."""

    def main(argv: list[str] | None = None) -> int:
        outcome: dict[str, int] = {}

        @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=name)
        def task(cfg: DictConfig) -> None:
            outcome["code"] = 1  # until body returns: a bug (Hydra prints its traceback)
            try:
                checks.check_added_keys(list(HydraConfig.get().overrides.task), name)
                code = body(cfg)
            except UserError as exc:
                print(f"error: {one_paragraph(exc)}", file=sys.stderr)
                code = 2
            outcome["code"] = code if isinstance(code, int) and not isinstance(code, bool) else 0

        args = sys.argv[1:] if argv is None else argv
        if {"--help", "-h"} & set(args):
            print(help_text(name))
            return 0
        register_resolvers()
        saved_argv, handlers, level = sys.argv, logging.root.handlers[:], logging.root.level
        sys.argv = [f"python -m fmnist_exp.{name}", *args]
        try:
            task()
        except SystemExit as exit_:  # Hydra's own: --help (0), or a command line it refused
            if exit_.code in (0, None):
                return 0
            return outcome.get("code", 2)  # no code: refused before the app ran, bad input
        finally:
            sys.argv = saved_argv
            logging.root.handlers[:], logging.root.level = handlers, level
            HydraConfig.instance().cfg = None
        return outcome.get("code", 0)

    return main


def help_text(name: str) -> str:
    """`--help`: the app's header, its options as conf/<name>.yaml writes them (with their
    comments, which Hydra's own help drops), and its examples."""
    path = config_dir() / f"{name}.yaml"
    text = path.read_text()
    helps = OmegaConf.load(path).hydra.help
    options, skipping = [], False
    for line in text.splitlines():
        if line and not line[0].isspace():  # a top-level key starts or ends a skipped block
            skipping = line.startswith(("defaults:", "hydra:"))
        if not skipping and not line.startswith("#"):
            options.append(line)
    body = "\n".join(options).strip("\n")
    return (
        f"{helps.header}\nOptions (KEY=VALUE), from {path.name}:\n\n{body}\n\n{helps.footer}\n"
        "Every value is a Hydra override: lists as [a,b], values with spaces or quotes in quotes."
    )
