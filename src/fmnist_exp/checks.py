"""Every rule on a composed training config, each written once, run before anything is read or
recorded: a value that cannot work is a ConfigError naming the key, what it takes and an example.

Rules that depend on one network's shapes (a kernel too large for 28x28 pictures) live with that
network in models.py; rules on the tracking store (which touch the store) in tracking/store.py;
an empty sweep range in tracking/sweep.py (it is an override, not a value).
"""

import re
from collections.abc import Callable, Mapping
from difflib import get_close_matches
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from fmnist_exp.errors import ConfigError
from fmnist_exp.paths import config_dir

SPLITS = ("official", "random_80_10_10")  # data.split
AUGMENTATIONS = ("hflip", "crop_padding", "erase_prob")  # data.augment's keys (data/augment.py)


def is_number(value) -> bool:
    """An int or float from the config; True and False are not numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole(value, minimum: int = 1) -> bool:
    """A whole number >= minimum; 16.0 and True are not."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _rule(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check(cfg: DictConfig) -> None:
    """All rules on a composed train.yaml, in the order of the run."""
    if HydraConfig.initialized():  # composed from a command line: what it added is read
        check_added_keys(list(HydraConfig.get().overrides.task))
    for block in ("module.distill", "callbacks.ema", "data.augment"):
        check_block(cfg, block)
    check_run(cfg)
    check_data(OmegaConf.to_container(cfg.data, resolve=True))
    check_module(cfg.module)
    check_callbacks(cfg.callbacks)
    check_trainer(cfg)
    check_steps_per_call(cfg)


# Blocks whose keys go to a constructor that refuses what it does not take (Lightning's Trainer, the
# network, the torch optimizer, each callback), or that hold free-form entries (tags, file digests):
# `++trainer.<Lightning argument>=...` adds a real setting there. Every other key the run reads is
# in conf/, so a key added anywhere else (`+module.label_smothing=0.1`) would be recorded and ignored.
OPEN_BLOCKS = ("trainer", "model", "optimizer", "callbacks", "logger.tags", "data.md5", "search",
               "hydra")  # fmt: skip


def in_block(key: str, blocks: tuple[str, ...]) -> bool:
    return any(key == b or key.startswith(f"{b}.") for b in blocks)


def config_keys(node, prefix: str = "") -> list[str]:
    """Every key path in a config, blocks and leaves."""
    found = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        found.append(path)
        if isinstance(value, Mapping):
            found += config_keys(value, f"{path}.")
    return found


def composed_from_files(overrides: list[str], app: str = "train") -> DictConfig:
    """conf/<app>.yaml with the given overrides: what the config files define for those choices."""
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app
        return compose(app, overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(app, overrides=overrides)


def check_added_keys(overrides: list[str], app: str = "train") -> None:
    """An override that adds a key (`+key=`, or `++key=` where the files have none) or removes one
    (`~key`) outside OPEN_BLOCKS is refused, naming the closest real key: every app reads only the
    keys in conf/<app>.yaml, so an added one would change nothing (and training would record it in
    MLflow as if it had taken effect). Hydra's `+` opens even a structured config's node, so its
    schemas cannot refuse these."""
    parsed = [o for o in OverridesParser.create().parse_overrides(overrides) if o.package is None]
    groups = [o for o in parsed if (config_dir() / o.key_or_group).is_dir()]
    changes = [o for o in parsed if o not in groups and not in_block(o.key_or_group, OPEN_BLOCKS)]
    suspects = [o for o in changes if o.is_add() or o.is_force_add() or o.is_delete()]
    if not suspects:
        return
    plain = [o.input_line for o in parsed if not (o in suspects or o.is_sweep_override())]
    known = config_keys(OmegaConf.to_container(composed_from_files(plain, app)))  # unresolved
    for override in suspects:
        key = override.key_or_group
        if override.is_force_add() and key in known:  # ++ on a key the files have: a change
            continue
        if override.is_delete():
            raise ConfigError(
                f"{override.input_line}: the run reads {key}; removing it would end the run with a "
                f"missing setting. Set it to another value instead ({key}=...)."
            )
        close = get_close_matches(key, [k for k in known if not k.startswith("hydra")], 1, 0.6)
        instead = f"did you mean {close[0]}? Set it as {close[0]}=..." if close else (
            f"its keys are in conf/{app}.yaml (--help lists them)."
        )  # fmt: skip
        if app != "train":
            raise ConfigError(f"{app}: {override.input_line}: {app} reads no {key}; {instead}")
        raise ConfigError(
            f"{override.input_line}: the run reads no {key}, so it would be recorded in MLflow "
            f"and change nothing; {instead} (only trainer., model., optimizer., callbacks. and "
            f"logger.tags. take added keys: their constructors check them)."
        )


def check_block(cfg: DictConfig, key: str) -> None:
    """`callbacks.ema=0.999` (a value where a block of settings belongs) would end in an
    AttributeError deep inside the run: a block stays a block, or null where it may be off."""
    value = OmegaConf.select(cfg, key)
    if value is None or isinstance(value, DictConfig):
        return
    group = key.split(".")[0]
    defaults = OmegaConf.select(OmegaConf.load(_default_file(group)), key.split(".", 1)[1])
    keys = ", ".join(f"{key}.{k}" for k in (defaults or {}) if not k.startswith("_"))
    raise ConfigError(
        f"{key}={value!r} sets a whole block of settings to one value; set its keys instead "
        f"({keys}; defaults in conf/{group}/)."
    )


def _default_file(group: str) -> Path:
    return config_dir() / group / ("fashion_mnist.yaml" if group == "data" else "default.yaml")


def check_run(cfg: DictConfig) -> None:
    seed = cfg.seed
    _rule(
        is_whole(seed, 0) and seed <= 2**32 - 1,
        f"seed={seed!r} must be an int from 0 to 4294967295: it seeds python, numpy, torch and "
        f"the batch order. Pass e.g. seed=1, or seed=1,2,3 with --multirun.",
    )
    _rule(
        isinstance(cfg.skip_finished, bool),
        f"skip_finished={cfg.skip_finished}: must be true or false. Pass skip_finished=true to "
        f"skip configs that already FINISHED (and resume unfinished ones), or leave it out.",
    )
    name = cfg.logger.register_model
    _rule(
        name is None or (isinstance(name, str) and name.strip() and not set(name) & set("/:")),
        f"logger.register_model={name!r} is not a registry name MLflow accepts (it must not be "
        f"blank or contain '/' or ':'). Use letters, digits, '-', '_' or '.', e.g. "
        f"logger.register_model=fmnist.",
    )
    _rule(
        not name or cfg.logger.log_model is True,
        f"logger.register_model={name} needs the logged model: drop logger.log_model=false, or "
        f"register_model.",
    )


def check_data(data: Mapping) -> None:
    _rule(
        data["split"] in SPLITS, f"data.split={data['split']!r} is not one of {', '.join(SPLITS)}."
    )
    for key in ("batch_size", "eval_batch_size"):
        _rule(
            is_whole(data[key]),
            f"data.{key}={data[key]!r} must be a positive number of images per batch.",
        )
    val_size = data["val_size"]
    _rule(
        is_whole(val_size) or (isinstance(val_size, float) and 0 < val_size < 1),
        f"data.val_size={val_size!r} must be a count of training images held out for validation "
        f"(a whole number >= 1, e.g. 5000) or a fraction of them (0 < f < 1, e.g. 0.1).",
    )
    folds, fold = data.get("folds"), data.get("fold")
    _rule(
        folds is None or is_whole(folds, 2),
        f"data.folds={folds!r} must be null (no cross-validation) or a number of folds >= 2.",
    )
    _rule(
        is_whole(fold, 0) and (folds is None or fold < folds),
        f"data.fold={fold!r} must be a fold number from 0 to data.folds-1"
        + (f" ({folds - 1}); every fold: --multirun 'data.fold=range({folds})'." if folds else "."),
    )
    default_val_size = OmegaConf.load(_default_file("data")).val_size
    _rule(
        folds is None or val_size == default_val_size,
        f"data.val_size={val_size} has no effect under data.folds={folds}: each run validates on "
        f"its fold (1/{folds} of the training images). Drop data.val_size, or data.folds.",
    )
    augment = data.get("augment") or {}
    if unknown := sorted(set(augment) - set(AUGMENTATIONS)):
        raise ConfigError(
            f"data.augment.{unknown[0]} is not an augmentation; the switches are "
            f"{', '.join(AUGMENTATIONS)} (conf/data/fashion_mnist.yaml)."
        )
    takes: dict[str, tuple[Callable, str]] = {
        "hflip": (lambda v: isinstance(v, bool), "true or false"),
        "crop_padding": (lambda v: is_whole(v, 0), "a whole number of pixels >= 0 (0 = off)"),
        "erase_prob": (lambda v: is_number(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    }
    for key, value in augment.items():
        ok, what = takes[key]
        _rule(ok(value), f"data.augment.{key}={value!r} must be {what}.")


def check_module(module: DictConfig) -> None:
    smoothing = module.label_smoothing
    _rule(
        is_number(smoothing) and 0 <= smoothing < 1,
        f"module.label_smoothing={smoothing!r} must be a number in [0, 1): the share of each "
        f"target spread over the other classes (0 = off; the recipes use 0.1).",
    )
    for key in ("tta_hflip", "compile", "channels_last"):
        _rule(isinstance(module[key], bool), f"module.{key}={module[key]!r} must be true or false.")
    _rule(
        module.steps_per_call == "auto" or is_whole(module.steps_per_call),
        f"module.steps_per_call={module.steps_per_call!r} must be auto or a whole number >= 1 "
        f"(optimizer steps per call of the training step; 1 = Lightning's usual loop).",
    )
    distill = module.distill
    teachers = distill.teachers
    _rule(
        OmegaConf.is_list(teachers) and all(isinstance(t, str) and t for t in teachers),
        f"module.distill.teachers={teachers!r} must be a list of MLflow run ids, e.g. "
        f"'module.distill.teachers=[<run_id>,<run_id>]' ([] = no distillation).",
    )
    _rule(
        is_number(distill.weight) and 0 <= distill.weight <= 1,
        f"module.distill.weight={distill.weight!r} must be in [0, 1]: the share of the loss on "
        f"the teachers.",
    )
    _rule(
        is_number(distill.temperature) and distill.temperature > 0,
        f"module.distill.temperature={distill.temperature!r} must be a number > 0 "
        f"(1 = plain probabilities).",
    )


def check_callbacks(callbacks: DictConfig) -> None:
    decay = OmegaConf.select(callbacks, "ema.decay")
    _rule(
        decay is None or (is_number(decay) and 0 < decay < 1),
        f"callbacks.ema.decay={decay!r} must be a number between 0 and 1 (each step keeps that "
        f"share of the average), e.g. callbacks.ema.decay=0.999; callbacks.ema.decay=null "
        f"switches the average off.",
    )


# module.steps_per_call=auto: optimizer steps per call where nothing asks Lightning to act per call
AUTO_STEPS_PER_CALL = 16


def per_call_settings(cfg: DictConfig) -> dict[str, bool]:
    """What Lightning does around each call of the training step (-> whether it is asked for).
    With several optimizer steps per call it would act once per call, not once per step."""
    trainer = cfg.trainer
    return {
        "callbacks.ema.decay": OmegaConf.select(cfg, "callbacks.ema.decay") is not None,
        "trainer.gradient_clip_val": bool(trainer.get("gradient_clip_val")),
        "trainer.accumulate_grad_batches": (trainer.get("accumulate_grad_batches") or 1) != 1,
        "trainer.max_steps": (trainer.get("max_steps") or -1) != -1,
        # checked after each call: a multiple of it that falls inside a call is never seen
        "callbacks.model_checkpoint.every_n_train_steps": bool(
            OmegaConf.select(cfg, "callbacks.model_checkpoint.every_n_train_steps")
        ),
    }


def counts_batches(cfg: DictConfig) -> bool:
    """Whether the trainer is told a number of training batches (trainer.limit_train_batches=20,
    fast_dev_run, overfit_batches=10, val_check_interval=100: debug modes): Lightning counts calls."""
    trainer = cfg.trainer
    counted = [
        trainer.get(k) for k in ("limit_train_batches", "overfit_batches", "val_check_interval")
    ]
    return bool(trainer.get("fast_dev_run")) or any(is_whole(v) for v in counted)


def steps_per_call(cfg: DictConfig) -> int:
    """module.steps_per_call as a number. auto is AUTO_STEPS_PER_CALL, or 1 where a per-call setting
    is asked for or the trainer counts batches (so that a count of batches still means batches)."""
    value = cfg.module.steps_per_call
    if value != "auto":
        return value
    busy = any(per_call_settings(cfg).values()) or counts_batches(cfg)
    return 1 if busy else AUTO_STEPS_PER_CALL


def check_steps_per_call(cfg: DictConfig) -> None:
    """module.steps_per_call > 1 given as a number makes the optimizer steps itself (Lightning's
    manual optimisation): what Lightning would do per step from the outside is not there."""
    if cfg.module.steps_per_call in ("auto", 1):
        return
    for key, clash in per_call_settings(cfg).items():
        _rule(
            not clash,
            f"module.steps_per_call={cfg.module.steps_per_call} cannot be combined with {key}: "
            f"Lightning applies that around each call of the training step, which then makes "
            f"several optimizer steps. Leave {key} at its default, or set module.steps_per_call=1 "
            f"(or auto, which picks 1 here).",
        )


def check_validates(cfg: DictConfig) -> None:
    """A sweep or search ranks its jobs on val/acc_best: a job that never validates
    (trainer.limit_val_batches=0, or check_val_every_n_epoch beyond max_epochs) has none."""
    trainer = cfg.trainer
    every, epochs = trainer.get("check_val_every_n_epoch") or 1, trainer.get("max_epochs") or 1
    for key, never in (
        ("trainer.limit_val_batches", trainer.get("limit_val_batches") == 0),
        ("trainer.check_val_every_n_epoch", is_whole(every) and epochs != -1 and every > epochs),
    ):
        _rule(
            not never,
            f"{key}={trainer.get(key.split('.')[1])}: its jobs would never validate, and a sweep "
            f"ranks its jobs (and a search steers) on val/acc_best. Validate at least once, or run "
            f"the jobs as single runs.",
        )


def check_trainer(cfg: DictConfig) -> None:
    epochs = cfg.trainer.get("max_epochs")
    _rule(
        epochs is None or epochs == -1 or is_whole(epochs),
        f"trainer.max_epochs={epochs!r} must be a whole number of passes over the training split, "
        f"1 or more (or -1: no limit, with trainer.max_steps); 0 would test an untrained network.",
    )
    no_limit = epochs == -1 and (cfg.trainer.get("max_steps") or -1) < 1
    _rule(
        not (no_limit and cfg.get("scheduler")),
        "trainer.max_epochs=-1 (no limit) leaves the learning-rate schedule no number of steps "
        "to run over: give trainer.max_epochs a number of epochs, or train without one "
        "(scheduler=none).",
    )


# The apps around training (conf/<app>.yaml): each value checked before a model or store is opened.


def check_whole(app: str, key: str, value, minimum: int, maximum: int | None = None) -> int:
    """`key=value` as a whole number in [minimum, maximum], else a ConfigError naming the key."""
    bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
    _rule(
        is_whole(value, minimum) and (maximum is None or value <= maximum),
        f"{app}: {key}={value!r} must be a whole number {bound}.",
    )
    return value


def check_predict(cfg: DictConfig) -> list[Path]:
    """predict's options; returns the input paths, each one there."""
    example = "e.g. inputs=photos/ or inputs=[photos/,more.csv]"
    inputs = cfg.inputs
    paths = [inputs] if isinstance(inputs, str) else list(inputs or [])
    _rule(
        bool(paths) and all(isinstance(p, str) and p for p in paths),
        f"predict: inputs={inputs!r}: give the pictures, CSV or IDX files, or folders to label, "
        f"{example}.",
    )
    check_whole("predict", "batch_size", cfg.batch_size, 1)
    check_whole("predict", "show", cfg.show, 0)
    for path in map(Path, paths):  # before the model loads: a typo costs no wait
        _rule(path.exists(), f"predict: inputs: {path} does not exist ({example}).")
    if cfg.out:
        check_out(Path(cfg.out), [Path(p) for p in paths])
    return [Path(p) for p in paths]


def check_out(out: Path, inputs: list[Path]) -> None:
    """predict's out= is a new or replaceable CSV: never one of the inputs (a CSV of pixels would
    be overwritten with predictions), never a folder, and writable; checked before any work."""
    hint = "Give out= a new file name, e.g. out=predictions.csv."
    _rule(not out.is_dir(), f"predict: out={out} is a folder; out= names the CSV to write. {hint}")
    target = out.resolve()
    for path in inputs:
        inside = path.is_dir() and target.is_relative_to(path.resolve())
        _rule(
            not (inside or (path.is_file() and target == path.resolve())),
            f"predict: out={out} is {'inside the input folder' if inside else 'one of the inputs'} "
            f"{path}: writing there would {'add to' if inside else 'overwrite'} what is labelled. "
            f"{hint}",
        )
    existed = out.exists()
    try:  # a real try, not os.access: root passes that check on a read-only disk or in /proc
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a"):  # appends nothing: an existing file keeps its bytes until the end
            pass
        if not existed:
            out.unlink()
    except OSError as exc:
        raise ConfigError(
            f"predict: out={out} cannot be written ({exc.strerror or exc}). Give out= a path in a "
            f"folder you can write to; nothing was computed."
        ) from exc


def check_serve(cfg: DictConfig) -> None:
    check_whole("serve", "port", cfg.port, 1, 65535)
    check_whole("serve", "max_batch", cfg.max_batch, 1)
    megabytes = cfg.max_upload_mb
    _rule(
        is_number(megabytes) and 0 < megabytes < float("inf"),
        f"serve: max_upload_mb={megabytes!r} must be a number of megabytes > 0 (the largest "
        f"picture a request may send), e.g. max_upload_mb=5.",
    )


def check_register(cfg: DictConfig) -> None:
    name, alias = cfg.name, cfg.alias
    _rule(
        isinstance(name, str) and bool(name.strip()),
        "register: name= is required, e.g. name=fmnist (the registry entry to add to).",
    )
    _rule(
        alias is None
        or (
            isinstance(alias, str)
            and bool(re.fullmatch(r"[\w-]{1,255}", alias))
            and alias.lower() != "latest"
            and not re.fullmatch(r"[vV]\d+", alias)
        ),
        f"register: alias={alias!r} is not an alias MLflow accepts: letters, digits, _ and -, "
        f"not 'latest' and not a version such as v2. E.g. alias=champion.",
    )


def check_flag(app: str, key: str, value) -> None:
    _rule(isinstance(value, bool), f"{app}: {key}={value!r} must be true or false.")
