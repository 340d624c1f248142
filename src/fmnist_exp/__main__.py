"""`python -m fmnist_exp [overrides]`: Hydra composes conf/train.yaml, train() runs it.

User errors (a bad config value, missing or corrupt data, no GPU for accelerator=gpu) end here as
one paragraph and exit code 2; anything else is a bug and keeps its traceback.
"""

import logging
import sys

import hydra
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from fmnist_exp.errors import UserError
from fmnist_exp.paths import config_dir, register_resolvers

log = logging.getLogger("fmnist_exp")


def user_error(exc: BaseException) -> BaseException | None:
    """The user-facing error behind `exc`, following Hydra's and Lightning's wrapping."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for kinds in ((UserError, MisconfigurationException), InstantiationException):
        if found := next((e for e in chain if isinstance(e, kinds)), None):
            return found
    return None


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the best validation accuracy: the objective for Hydra sweepers."""
    from fmnist_exp.train import train  # heavy imports after Hydra has parsed the command line

    try:
        return train(cfg)["val/acc_best"]
    except Exception as exc:
        if (cause := user_error(exc)) is None:
            raise
        message = " ".join(str(cause).split())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
