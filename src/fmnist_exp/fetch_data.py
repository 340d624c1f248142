"""`python -m fmnist_exp.fetch_data [data.download=true] [data.*=...]` (options: conf/fetch_data.yaml):
find (or fetch) the dataset the way a training run would, with the same `data` config, and say
where it is. `make setup` runs it (scripts/get_data.sh)."""

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fmnist_exp import checks
from fmnist_exp.app import hydra_app


def run(cfg: DictConfig) -> int:
    checks.check_data(OmegaConf.to_container(cfg.data, resolve=True))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    summary = datamodule.summary()
    print(f"Fashion-MNIST ({summary['data/format']}) in {summary['data/source']}")
    return 0


main = hydra_app("fetch_data", run)

if __name__ == "__main__":
    raise SystemExit(main())
