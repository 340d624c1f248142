"""What every command-line app shares. Each one (train, eval, predict, serve, report, register) is
a Hydra app with its own primary config in conf/ (`conf/<app>.yaml`), so every command line takes
the same KEY=VALUE overrides and `--help` lists the app's options.

Exit codes, the same for every app: 0 done; 2 bad input (a value our checks refuse, or a command
line Hydra refuses: command_line.py names the closest real key), printed as one paragraph without
a traceback; 1 an app's own partial failure (predict: some pictures unreadable), or a bug, which
prints its traceback.

An app module imports only what its command line needs; what its work needs is imported in its run
function, after the checks, so `--help` and a bad value answer before torch or MLflow load.
"""

import logging
import sys
import traceback
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig

from fmnist_exp import checks, command_line
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
            try:
                checks.check_added_keys(list(HydraConfig.get().overrides.task), name)
                code = body(cfg)
            except UserError as exc:
                print(f"error: {one_paragraph(exc)}", file=sys.stderr)
                code = 2
            except Exception:  # a bug
                traceback.print_exc()
                code = 1
            outcome["code"] = code if isinstance(code, int) and not isinstance(code, bool) else 0

        args = sys.argv[1:] if argv is None else argv
        if {"--help", "-h"} & set(args):
            print(command_line.app_help(name))
            return 0
        register_resolvers()
        saved_argv, handlers, level = sys.argv, logging.root.handlers[:], logging.root.level
        sys.argv = [f"python -m fmnist_exp.{name}", *args]
        try:
            with command_line.hydra_errors_raised():
                task()
        except HydraException as exc:
            if "code" in outcome:  # the app ran: a bug in Hydra's hands
                raise
            print(f"error: {one_paragraph(command_line.refused(exc, args, name))}", file=sys.stderr)
            return 2
        except SystemExit as exit_:  # Hydra's own: --hydra-help, --cfg and the like
            return 0 if exit_.code in (0, None) else 2
        finally:
            sys.argv = saved_argv
            logging.root.handlers[:], logging.root.level = handlers, level
            HydraConfig.instance().cfg = None
        return outcome.get("code", 0)

    return main
