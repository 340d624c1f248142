"""`python -m fmnist_exp.fetch_data [--download] [overrides]`: find (or fetch) the dataset the way
a training run would, with the same `data` config, and say where it is. Used by `make setup`."""

import argparse
import sys

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from fmnist_exp.errors import one_paragraph, user_error
from fmnist_exp.paths import config_dir, register_resolvers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--download", action="store_true", help="fetch missing files (data.download=true)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. data.data_dir=/some/dir"
    )
    args = parser.parse_args(argv)
    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=[*args.overrides, f"data.download={args.download}"])
    try:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup()
    except Exception as exc:
        if (cause := user_error(exc)) is None:
            raise
        print(f"error: {one_paragraph(cause)}", file=sys.stderr)
        return 2
    summary = datamodule.summary()
    print(f"Fashion-MNIST ({summary['data/format']}) in {summary['data/source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
