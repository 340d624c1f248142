"""Where things live: the config directory, the project root, the tracking store.

In a source checkout (editable install) the root is the checkout and conf/ is its top-level folder;
in an installed wheel conf/ ships inside the package and the root is the current directory.
"""

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from fmnist_exp.errors import ConfigError, one_paragraph

PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE_DIR.parents[1]  # src/fmnist_exp -> repo root, when run from a checkout


def is_checkout() -> bool:
    return (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "conf").is_dir()


def config_dir() -> Path:
    """conf/ of the checkout when there is one (so edits apply at once), else the packaged copy."""
    return _CHECKOUT / "conf" if is_checkout() else PACKAGE_DIR / "conf"


def project_root() -> Path:
    """Folder that holds mlruns/, outputs/ and data/: the checkout, else the working directory."""
    return _CHECKOUT if is_checkout() else Path.cwd()


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the checkout's sqlite store (absolute, as MLflow 3 needs)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"
    )


def job_gpu(n_gpus: int) -> int:
    """GPU index for this sweep job: job number modulo the GPUs on the machine (0 outside sweeps).

    With `hydra.launcher.n_jobs=N` on an N-GPU machine, consecutive jobs land on distinct GPUs.
    """
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.num % int(n_gpus) if HydraConfig.initialized() else 0


def register_resolvers() -> None:
    """`${fmnist.root:}`, `${fmnist.tracking_uri:}`, `${fmnist.job_gpu:N}` for the YAML files and
    the command line; safe to call twice."""
    for name, fn in {
        "fmnist.root": lambda: str(project_root()),
        "fmnist.tracking_uri": default_tracking_uri,
        "fmnist.job_gpu": job_gpu,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def check_writable(folder: Path, key: str = "hydra.run.dir") -> None:
    """A run's folder must take files before anything is recorded (ConfigError naming `key`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"The output folder {folder} cannot be written ({exc.strerror or exc}). Point {key} at "
            f"a writable folder with free space; nothing was recorded."
        ) from exc


class WritableOutputs(Callback):
    """Hydra callback: checks the run (or sweep) folder before Hydra writes into it, so an unwritable
    place is one clear paragraph and exit code 2, not a traceback."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(Path(config.hydra.sweep.dir), "hydra.sweep.dir")

    @staticmethod
    def _check(folder: Path, key: str) -> None:
        try:
            check_writable(folder, key)
        except ConfigError as exc:
            print(f"error: {one_paragraph(exc)}", file=sys.stderr)
            sys.exit(2)
