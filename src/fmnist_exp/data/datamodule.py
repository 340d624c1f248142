"""The one LightningDataModule: find or fetch the files, split, and batch from memory.

It reads every layout dataset.py knows (Fashion-MNIST's files, or pictures in a folder per class),
of any size. The whole dataset is kept as uint8 tensors ([N, 1, 28, 28], ~55 MB for Fashion-MNIST)
and every batch is a slice of them, so there is no per-sample Python. Normalisation happens inside the model (see Classifier), so
batches hold raw pixels and the logged model takes raw pixels too.
"""

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch

from fmnist_exp.data import dataset
from fmnist_exp.data.augment import apply_choices, draw_choices
from fmnist_exp.errors import ConfigError, DataError
from fmnist_exp.paths import project_root


class TensorBatches:
    """Batches sliced from in-memory tensors; a fresh seeded permutation every epoch when shuffling.

    Under DDP each of `world_size` processes takes every world_size-th image of the same
    permutation, and the training set is trimmed so every process runs the same number of steps.
    Epoch k's order comes from seed + k: `epoch_of` (the trainer's current epoch) names k when
    each epoch starts, so a resumed run's epoch 2 gets epoch 2's order; without it, k counts up from 0.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: dict | None = None,
        rank: int = 0,
        world_size: int = 1,
        epoch_of: Callable[[], int] | None = None,
        soft_targets: torch.Tensor | None = None,
        steps_per_call: int = 1,
    ):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.steps_per_call = steps_per_call  # > 1: each item is a list of that many batches
        self.soft_targets = soft_targets  # [N, 10] per image (distill.py): batches become (x, y, t)
        self.shuffle, self.seed, self.augment = shuffle, seed, augment or {}
        self.rank, self.world_size = rank, world_size
        self.epoch, self.epoch_of = 0, epoch_of  # the next epoch's number: its seed is seed + epoch

    def _count(self) -> int:
        n = len(self.labels)
        if self.world_size == 1:
            return n
        if self.shuffle:  # equal shards: DDP processes step in lockstep
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    @property
    def optimizer_steps(self) -> int:
        """Batches per epoch: one optimizer step each."""
        return math.ceil(self._count() / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.optimizer_steps / self.steps_per_call)

    def __iter__(self) -> Iterator:
        if self.steps_per_call == 1:
            yield from self._batches()
            return
        group: list[tuple[torch.Tensor, ...]] = []
        for batch in self._batches():
            group.append(batch)
            if len(group) == self.steps_per_call:
                yield group
                group = []
        if group:  # the epoch's last call: what is left
            yield group

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        device, n, size = self.images.device, len(self.labels), self.batch_size
        # Randomness comes from a CPU generator and goes to the device once per epoch: the same seed
        # gives the same batches on every device, with no per-step host transfer.
        epoch = self.epoch_of() if self.epoch_of else self.epoch
        generator = torch.Generator().manual_seed(self.seed + epoch)
        self.epoch = epoch + 1
        order = torch.randperm(n, generator=generator).to(device) if self.shuffle else None
        choices = {  # per image, indexed like self.images
            k: v.to(device) for k, v in draw_choices(n, generator, **self.augment).items()
        }
        if self.world_size > 1:
            order = torch.arange(n, device=device) if order is None else order
            order = order[self.rank :: self.world_size][: self._count()]
        for start in range(0, self._count(), size):
            if order is None:  # in order, one process: plain slices, no copy
                idx = slice(start, start + size)
                x, y = self.images[idx], self.labels[idx]
            else:
                idx = order[start : start + size]
                x, y = self.images[idx], self.labels[idx]
            if choices:
                x = apply_choices(x, {k: v[..., idx] for k, v in choices.items()}, **self.augment)
            yield (x, y) if self.soft_targets is None else (x, y, self.soft_targets[idx])


def resolved(path: str | Path, key: str) -> Path:
    """An absolute path; a symbolic-link loop is a ConfigError naming `key`."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a loop
        raise ConfigError(
            f"{key}={path} cannot be resolved ({exc}): a symbolic-link loop or an unreadable "
            f"folder. Point it at the folder that holds the data."
        ) from exc


def validation_count(val_size: int | float, n: int, source: Path | str) -> int:
    """data.val_size as a number of images held out of the n training images: a count as given, a
    fraction (0 < f < 1) of n, rounded, at least 1. Either must leave images to train on."""
    count = val_size if isinstance(val_size, int) else max(1, round(val_size * n))
    if count >= n:
        given = "" if isinstance(val_size, int) else f" ({count} of them)"
        raise ConfigError(
            f"data.val_size={val_size}{given} must be smaller than the training split, which has "
            f"{n} images in {source}: validation is held out of it. Give a fraction such as "
            f"data.val_size=0.1 or a count such as data.val_size={max(1, n // 10)} (a tenth)."
        )
    return count


def fold_of(labels: torch.Tensor, folds: int, source: Path | str) -> torch.Tensor:
    """Stratified k-fold: each image's fold (0..folds-1), for labels already in a seeded random
    order. The images of each class, in that order, are dealt to the folds in turn (one class
    after another, continuing the count), so every fold holds each class's share to within one
    image and the folds' sizes differ by at most one."""
    if folds > len(labels):
        raise ConfigError(
            f"data.folds={folds} needs at least {folds} training images, one per fold; {source} "
            f"has {len(labels)}. Use fewer folds."
        )
    by_class = torch.sort(labels, stable=True).indices  # class by class, the random order kept
    fold = torch.empty(len(labels), dtype=torch.int64)
    fold[by_class] = torch.arange(len(labels)) % folds
    return fold


class FashionMNISTDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = False,
        url: str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5: dict[str, str] | None = None,
        split: str = "official",
        val_size: int | float = 1 / 12,
        split_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        shuffle_seed: int = 0,
        augment: dict | None = None,
        steps_per_call: int = 1,
    ):
        super().__init__()
        # the values were checked with the whole config (checks.check_data)
        augment = dict(augment or {})
        self.data_dir, self.download, self.url, self.md5 = data_dir, download, url, dict(md5 or {})
        self.split, self.val_size, self.split_seed = split, val_size, split_seed
        self.folds, self.fold = folds, fold  # k-fold: fold `fold` of `folds` validates
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.shuffle_seed, self.augment = shuffle_seed, augment
        self.steps_per_call = steps_per_call  # module.steps_per_call: training batches per call
        self.source: Path | None = None
        self.name: str | None = None
        self.format: str | None = None
        self.class_names: tuple[str, ...] = dataset.CLASS_NAMES  # label id -> name, once read
        self.soft_targets: torch.Tensor | None = None  # [N_train, 10] teacher targets (distill.py)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.split_seed)

    def search_dirs(self) -> list[Path]:
        """An explicit data.data_dir is used as given; the default also searches Debian's copy."""
        if self.data_dir is not None:
            return [resolved(self.data_dir, "data.data_dir")]
        default = os.environ.get("FMNIST_DATA_DIR") or project_root() / "data" / "fashion-mnist"
        return [resolved(default, "FMNIST_DATA_DIR"), dataset.DEBIAN_DIR]

    def prepare_data(self) -> None:
        dirs = self.search_dirs()
        if self.download and not any(dataset.detect_format(d) for d in dirs):
            try:
                dataset.download(dirs[0], self.url, self.md5)
            except DataError as e:
                searched = "; ".join(dataset.describe_dir(d) for d in dirs)
                raise DataError(f"{e} Also searched: {searched}.") from e

    def fingerprint(self) -> str:
        """The digest of the files setup() will read (dataset.fingerprint), after any download:
        part of a run's identity, so the same overrides on other data are another experiment."""
        self.prepare_data()
        note = "" if self.download else "Downloading is off (data.download=false). "
        return dataset.fingerprint(self.search_dirs(), note)

    def setup(self, stage: str | None = None) -> None:
        if self.source is not None:  # already loaded: setup runs once per process
            return
        note = "" if self.download else "Downloading is off (data.download=false). "
        data = dataset.load(self.search_dirs(), download_note=note)
        self.source, self.format, self.class_names = data.source, data.format, data.class_names
        self.name = dataset.name_of(data)  # fashion-mnist, or the folder's name
        if self.split == "official":  # validation from the training split; the test split as is
            pool = data.train_images, data.train_labels
            self.test = data.test_images, data.test_labels
            order = torch.randperm(len(pool[1]), generator=self._generator())
            if not self.folds:
                n_val = validation_count(self.val_size, len(order), data.source)
                val_idx, train_idx = order[:n_val], order[n_val:]
        else:  # Deep Learning Studio: both splits pooled and shuffled, then 80/10/10
            pool = (
                torch.cat([data.train_images, data.test_images]),
                torch.cat([data.train_labels, data.test_labels]),
            )
            if len(pool[1]) < 10:
                raise ConfigError(
                    f"data.split=random_80_10_10 needs at least 10 images to give each part one; "
                    f"{data.source} has {len(pool[1])}. Add images, or use data.split=official."
                )
            shuffled = torch.randperm(len(pool[1]), generator=self._generator())
            n_train, n_val = int(0.8 * len(shuffled)), int(0.1 * len(shuffled))
            test = shuffled[n_train + n_val :]
            self.test = pool[0][test], pool[1][test]
            order = shuffled[: n_train + n_val]  # what k-fold deals out: all but the test part
            train_idx, val_idx = shuffled[:n_train], shuffled[n_train : n_train + n_val]
        if self.folds:  # fold `fold` validates, the other folds train
            in_fold = fold_of(pool[1][order], self.folds, data.source) == self.fold
            val_idx, train_idx = order[in_fold], order[~in_fold]
        self.train = pool[0][train_idx], pool[1][train_idx]
        self.val = pool[0][val_idx], pool[1][val_idx]
        pixels = self.train[0].float()
        self.mean, self.std = pixels.mean().item(), pixels.std().item()  # raw 0..255 scale

    def summary(self) -> dict[str, str | int]:
        """What was read, logged as MLflow params on every run."""
        return {
            "data/source": str(self.source),
            "data/format": str(self.format),
            "data/n_train": len(self.train[1]),
            "data/n_val": len(self.val[1]),
            "data/n_test": len(self.test[1]),
            "data/classes": json.dumps(list(self.class_names)),
            "data/name": str(self.name),
        }

    def splits(self) -> list[dict]:
        """Each split as the MLflow dataset a run logs (tracking/store.log_datasets): its context,
        the data's name, the split's content digest, the folder read, its size and class names."""
        parts = (("training", self.train), ("validation", self.val), ("test", self.test))
        return [
            {"context": context, "name": self.name, "source": self.source,
             "digest": dataset.content_digest(*split, self.class_names),
             "n_images": len(split[1]), "classes": list(self.class_names)}
            for context, split in parts
        ]  # fmt: skip

    def _shard(self) -> dict[str, int]:
        trainer = self.trainer
        return {"rank": trainer.global_rank, "world_size": trainer.world_size} if trainer else {}

    def resident(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's uint8 images and labels on the training device, copied there once: batches,
        shuffling and augmentation then happen on that device, with no per-step host transfer."""
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        images, labels = getattr(self, split)
        if images.device != device:
            images, labels = images.to(device), labels.to(device)
            setattr(self, split, (images, labels))
        return images, labels

    def train_dataloader(self) -> TensorBatches:
        images, labels = self.resident("train")
        soft = self.soft_targets
        if soft is not None and soft.device != images.device:
            soft = self.soft_targets = soft.to(images.device)
        return TensorBatches(
            images, labels, self.batch_size, shuffle=True, seed=self.shuffle_seed,
            augment=self.augment, **self._shard(), soft_targets=soft,
            steps_per_call=self.steps_per_call,
            epoch_of=lambda: self.trainer.current_epoch,  # read when the epoch starts: after a resume
        )  # fmt: skip

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.resident("val"), self.eval_batch_size, **self._shard())

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.resident("test"), self.eval_batch_size, **self._shard())
