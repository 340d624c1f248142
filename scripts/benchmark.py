"""Seconds per epoch: a plain PyTorch loop vs the framework, same model, data, batch, optimiser,
device and epochs, in one invocation (these machines are noisy: only the ratio measured side by side
means much). The sides, taking turns in a rotating order for --rounds rounds:

  plain               the loop written below: the reference
  lightning           the same model in a minimal LightningModule on a Trainer with Lightning's
                      defaults (no logger, checkpoints or callbacks of ours): Lightning's own floor
  framework           train(cfg) in this process, as `python -m fmnist_exp` runs it (checkpoints, MLflow
                      logging per epoch; module.steps_per_call=auto unless --steps-per-call), no
                      progress bar
  command             `python -m fmnist_exp ...` in its own process, exactly as a user types it (default
                      callbacks, progress bar, logging); its epochs timed from the logged val/acc
  framework_k1        framework with module.steps_per_call=1: Lightning's usual loop, one optimizer
                      step per call of the training step (left out when --steps-per-call 1)
  plain_compiled,     the plain loop and the framework under torch.compile (--no-compile: not run)
  framework_compiled

Each round gives ratios, and the result is their median, so a slow spell of the machine lands on
every side; beside it, the ratio of the least-disturbed (fastest) epochs. Also time to accuracy.

    python scripts/benchmark.py                       # both regimes: lenet_bn batch 128, mlp batch 64; Adam 1e-3, 3 rounds of 3 epochs (= make bench)
    python scripts/benchmark.py --model mlp --batch-size 64 --steps-per-call 16 --no-compile
    python scripts/benchmark.py --device cuda --precision bf16-mixed --epochs 6
    python scripts/benchmark.py --calls               # Python function calls per step instead of seconds
    python scripts/benchmark.py --time-to-accuracy experiment=blog_lenet_bn_c32_k33
    ... --record                                      # add the result rows to docs/results.md

Per-epoch time is training plus the validation pass, from the start of the epoch to its end (a
device sync at both ends), median over epochs 2..N of a run (epoch 1 pays for warm-up and
compilation). Start-up (reading the data, building the model; for the framework also the MLflow run
and the Trainer) is reported separately. Every side uses scheduler=none, so the plain loop needs no
schedule of its own.
"""

import argparse
import cProfile
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import lightning as L
import mlflow
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from record import RESULTS_MD, record  # noqa: E402  (scripts/record.py)

from fmnist_exp import checks  # noqa: E402
from fmnist_exp.errors import UserError  # noqa: E402
from fmnist_exp.models import Normalize  # noqa: E402
from fmnist_exp.paths import config_dir, register_resolvers  # noqa: E402
from fmnist_exp.train import train  # noqa: E402
from fmnist_exp.training.module import build  # noqa: E402

MARKER = "<!-- benchmark.py --record adds rows above this line -->"
THRESHOLDS = (0.90, 0.92, 0.94)
REGIMES = (("lenet_bn", 128), ("mlp", 64))  # (model, batch size) measured when neither is given


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def config(overrides: list[str], workdir: Path):
    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):  # a private store and output folder: benchmarks never touch mlruns/
        cfg.paths.output_dir = str(workdir / "run")
        cfg.logger.tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        cfg.logger.log_model = False
    checks.check(cfg)  # the rules train() applies, before any side trains
    return cfg


def data_and_net(cfg):
    """The loaded datamodule and the bare network (Normalize + the model) the two reference sides
    train; the framework builds the same through train()."""
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")  # also the training pixels' mean and std, for Normalize
    model_spec = OmegaConf.to_container(cfg.model, resolve=True)
    return data, nn.Sequential(Normalize(data.mean, data.std), build(model_spec))


# --- the reference: a plain PyTorch loop -----------------------------------------------------------


def plain_loop(cfg, device: torch.device, precision: str, profile=None, compiled=False) -> dict:
    """profile: a cProfile.Profile to run over epochs 2..N (for --calls). compiled: the network
    through torch.compile (its first epoch pays for the compilation)."""
    started = time.perf_counter()
    data, net = data_and_net(cfg)
    x_train, y_train = (t.to(device) for t in data.train)
    x_val, y_val = (t.to(device) for t in data.val)
    net = net.to(device)
    if compiled:
        net.compile()  # in place, as module.compile does
    optimizer = instantiate(cfg.optimizer, params=net.parameters())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    batch, n = cfg.data.batch_size, len(y_train)
    sync(device)
    startup = time.perf_counter() - started
    epochs = []
    for epoch in range(cfg.trainer.max_epochs):
        if profile and epoch == 1:
            profile.enable()
        sync(device)
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            with autocast:
                loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad(), autocast:
            for start in range(0, len(y_val), cfg.data.eval_batch_size):
                logits = net(x_val[start : start + cfg.data.eval_batch_size])
                correct += (
                    logits.argmax(1) == y_val[start : start + cfg.data.eval_batch_size]
                ).sum()
        val_acc = correct.item() / len(y_val)  # the one host sync per epoch
        sync(device)
        epochs.append(time.perf_counter() - t0)
    if profile:
        profile.disable()
    steps = -(-n // batch)
    return {"startup_s": startup, "epochs_s": epochs, "val_acc": val_acc, "steps": steps}


# --- the framework, timed from the inside ------------------------------------------------------------


class EpochClock(L.Callback):
    """Start-up (train() called -> first epoch starts) and each epoch's time: from its start to the
    next epoch's start (the last one: to the end of training), so the epoch-end work Lightning does
    after the callbacks (checkpoints, the MLflow write) is inside the clock. profile: a
    cProfile.Profile to run over epochs 2..N, as in plain_loop."""

    def __init__(self, started: float, profile=None):
        self.started, self.startup_s, self.epochs_s, self.t0 = started, None, [], None
        self.profile = profile

    def _tick(self, pl_module) -> None:
        sync(pl_module.device)
        now = time.perf_counter()
        if self.t0 is not None:
            self.epochs_s.append(now - self.t0)
        self.t0 = now

    def on_train_epoch_start(self, trainer, pl_module):
        if self.startup_s is None:
            self.startup_s = time.perf_counter() - self.started
        self._tick(pl_module)
        if self.profile and len(self.epochs_s) == 1:
            self.profile.enable()

    def on_train_end(self, trainer, pl_module):
        self._tick(pl_module)
        if self.profile:
            self.profile.disable()


class TimeToAccuracy(L.Callback):
    """After each epoch, with the clock stopped: test accuracy (the run's own evaluation path)."""

    def __init__(self):
        self.training_s, self.curve, self.t0 = 0.0, [], 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        sync(pl_module.device)
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.training_s += time.perf_counter() - self.t0
        images, labels = trainer.datamodule.resident("test")
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            correct = sum(
                int((pl_module(images[i : i + 1000]).argmax(1) == labels[i : i + 1000]).sum())
                for i in range(0, len(labels), 1000)
            )
        pl_module.train(was_training)
        self.curve.append((self.training_s, correct / len(labels)))


def framework(cfg, callbacks: list[L.Callback]) -> dict:
    started = time.perf_counter()
    results = train(cfg, extra_callbacks=callbacks)
    return results | {"wall_s": time.perf_counter() - started}


def timed(cfg, profile=None) -> dict:
    """The framework's run, in plain_loop's terms: start-up, each epoch's seconds, val accuracy."""
    clock = EpochClock(time.perf_counter(), profile)
    results = framework(cfg, [clock])
    return {
        "startup_s": clock.startup_s,
        "epochs_s": clock.epochs_s,
        "val_acc": results["val/acc_best"],
    }


def command_line(overrides: list[str], workdir: Path) -> dict:
    """The framework as users run it: `python -m fmnist_exp ...` in its own process, with the default
    callbacks, progress bar and MLflow logging. Each epoch's seconds come from the timestamps of the
    run's logged val/acc (one per epoch, written at its end); the first epoch counts from the run's
    start, and start-up is the rest of the process's wall time."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fmnist_exp", *overrides, f"logger.tracking_uri={uri}",
         f"hydra.run.dir={workdir / 'run'}", "logger.log_model=false"],
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise UserError(f"python -m fmnist_exp {' '.join(overrides)} failed: {done.stderr[-1500:]}")
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    stamps = sorted(m.timestamp for m in client.get_metric_history(run.info.run_id, "val/acc"))
    epochs = [(b - a) / 1000 for a, b in zip([run.info.start_time, *stamps], stamps, strict=False)]
    return {"startup_s": wall - sum(epochs), "epochs_s": epochs,
            "val_acc": run.data.metrics["val/acc_best"]}  # fmt: skip


# --- the floor: the same model in the smallest LightningModule ----------------------------------------


class BareModule(L.LightningModule):
    """What a user writes in twenty lines: loss, a validation count, the optimiser. Nothing logged."""

    def __init__(self, net: nn.Module, optimizer_cfg):
        super().__init__()
        self.net, self.optimizer_cfg = net, optimizer_cfg

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def on_validation_epoch_start(self):
        self.correct = torch.zeros((), device=self.device)

    def validation_step(self, batch, batch_idx):
        self.correct += (self.net(batch[0]).argmax(1) == batch[1]).sum()

    def configure_optimizers(self):
        return instantiate(self.optimizer_cfg, params=self.parameters())


def bare_lightning(cfg, profile=None) -> dict:
    """Lightning's own loop around plain_loop's model and the framework's batches."""
    started = time.perf_counter()
    data, net = data_and_net(cfg)  # fit() reuses what setup() read
    module = BareModule(net, cfg.optimizer)
    clock = EpochClock(started, profile)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
        max_epochs=cfg.trainer.max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
        default_root_dir=cfg.paths.output_dir,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return {
        "startup_s": clock.startup_s,
        "epochs_s": clock.epochs_s,
        "val_acc": float(module.correct) / len(data.val[1]),
    }


# --- main ----------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


def commit() -> str:
    """' at <short commit>' of this checkout (with '+' if it has uncommitted changes outside docs/,
    where the rows go), for a recorded row; '' outside a git checkout."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return ""
    changed = [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"]
    dirty = subprocess.run(changed, capture_output=True, text=True).stdout.strip()
    return f" at {head.stdout.strip()}{'+' if dirty else ''}"


def machine(device: torch.device) -> str:
    """The device and the versions that decide the speed, for a recorded row."""
    return (f"{device_name(device)}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"Lightning {L.__version__}")  # fmt: skip


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="with --batch-size, one regime (lenet_bn, batch 128 unless "
                        "given); with neither: both regimes, lenet_bn batch 128 and mlp batch 64")  # fmt: skip
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the median skips the first")
    parser.add_argument(
        "--rounds", type=int, default=3, help="plain/framework pairs, order alternating"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="32-true", help="32-true | bf16-mixed")
    parser.add_argument("--time-to-accuracy", metavar="OVERRIDE", nargs="+",
                        help="instead: train these overrides (e.g. experiment=blog_lenet_bn) and report seconds of training to 90/92/94%% test accuracy")  # fmt: skip
    parser.add_argument("--calls", action="store_true",
                        help="instead: Python function calls per training step (cProfile over epochs 2..N), plain vs framework")  # fmt: skip
    parser.add_argument(
        "--record", action="store_true", help="add the result rows to docs/results.md"
    )
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="the sides plain_compiled and framework_compiled: the plain loop and the framework under torch.compile (--no-compile leaves them out)")  # fmt: skip
    parser.add_argument("--steps-per-call", default="auto", metavar="K",
                        help="module.steps_per_call of the framework and command sides: auto (the default config's) or a whole number")  # fmt: skip
    args = parser.parse_args(argv)
    if args.model is None and args.batch_size is None and not args.time_to_accuracy:
        for model, batch_size in REGIMES:  # the overhead-bound regime at two step sizes
            main([*argv, "--model", model, "--batch-size", str(batch_size)])
        return
    args.model = "lenet_bn" if args.model is None else args.model
    args.batch_size = 128 if args.batch_size is None else args.batch_size
    k = args.steps_per_call
    if k != "auto" and not (k.isdigit() and int(k) >= 1):
        parser.error(f"--steps-per-call {k}: give auto or a whole number, 1 or more.")
    k = k if k == "auto" else int(k)
    if args.rounds < 1 or args.epochs < 1:
        parser.error(f"--rounds {args.rounds} --epochs {args.epochs}: both must be 1 or more.")
    if args.calls and args.epochs < 2:
        parser.error(f"--calls counts epochs 2..N (epoch 1 pays for warm-up): --epochs {args.epochs} "
                     "leaves none; give --epochs 2 or more.")  # fmt: skip
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: this torch ({torch.__version__}) sees no CUDA GPU. On a GPU "
                     "machine install a CUDA build (make setup TORCH_INDEX=cu126); here, leave --device "
                     "out or give --device cpu.")  # fmt: skip
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    command = f"`python scripts/benchmark.py {' '.join(argv)}`{commit()}"  # for recorded rows
    common = [f"trainer.accelerator={accelerator}", f"trainer.precision={args.precision}",
              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
              f"module.steps_per_call={k}"]  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        if args.time_to_accuracy:
            clock = TimeToAccuracy()
            cfg = config([*args.time_to_accuracy, *common], Path(tmp))
            results = framework(cfg, [clock])
            print(f"{device_name(device)}: {' '.join(args.time_to_accuracy)}")
            print("epoch  training s  test acc")
            for epoch, (seconds, acc) in enumerate(clock.curve, start=1):
                print(f"{epoch:5d} {seconds:11.1f} {acc:9.4f}")
            reached = {t: next((s for s, a in clock.curve if a >= t), None) for t in THRESHOLDS}
            cells = [f"{s:.1f} s" if s is not None else "not reached" for s in reached.values()]
            print(
                "seconds of training to "
                + ", ".join(f"{t:.0%}: {c}" for t, c in zip(THRESHOLDS, cells, strict=True))
            )
            print(f"final test/acc (best val checkpoint) {results['test/acc']:.4f}")
            if args.record:
                record(MARKER, [f"| {date.today()} | {machine(device)} | {command} | time to accuracy | "
                        f"{' / '.join(cells)} (90/92/94%); best-checkpoint test acc {results['test/acc']:.4f} |"], RESULTS_MD)  # fmt: skip
            return

        overrides = [f"model={args.model}", f"data.batch_size={args.batch_size}",
                     f"trainer.max_epochs={args.epochs}", "optimizer=adam", "scheduler=none", *common]  # fmt: skip
        sides = {  # name -> run(cfg, profile): startup_s, epochs_s (each epoch), val_acc
            "plain": lambda cfg, profile=None: plain_loop(cfg, device, args.precision, profile),
            "lightning": bare_lightning,
            "framework": timed,
        }
        if (
            not args.calls
        ):  # as users run it; seconds only (its own process has no profiler of ours)
            as_typed = [f"model={args.model}", f"data.batch_size={args.batch_size}",
                        f"trainer.max_epochs={args.epochs}", "optimizer=adam", "scheduler=none",
                        f"trainer.accelerator={accelerator}", f"trainer.precision={args.precision}",
                        *([] if k == "auto" else [f"module.steps_per_call={k}"])]  # fmt: skip
            sides["command"] = lambda cfg, profile=None: command_line(
                as_typed, Path(cfg.paths.output_dir).parent
            )
        if k != 1:  # the framework again in Lightning's usual loop: one optimizer step per call
            sides["framework_k1"] = lambda cfg, profile=None: timed(
                OmegaConf.merge(cfg, {"module": {"steps_per_call": 1}}), profile
            )
        if args.compile:  # both again with torch.compile: the plain loop, and the framework
            sides["plain_compiled"] = lambda cfg, profile=None: plain_loop(
                cfg, device, args.precision, profile, compiled=True
            )
            sides["framework_compiled"] = lambda cfg, profile=None: timed(
                OmegaConf.merge(cfg, {"module": {"compile": True}}), profile
            )
        if args.calls:  # deterministic, unlike seconds: the Python work per training step
            calls, results = {}, {}
            for side, run in sides.items():
                profile = cProfile.Profile()
                results[side] = run(config(overrides, Path(tmp) / side), profile=profile)
                calls[side] = pstats.Stats(profile).total_calls
            # per optimizer step over epochs 2..N, their validation passes included
            steps = results["plain"]["steps"] * (args.epochs - 1)
            per_step = {side: n / steps for side, n in calls.items()}
            cells = ", ".join(f"{side} {n:.0f} ({n / per_step['plain']:.2f}x)" for side, n in per_step.items())  # fmt: skip
            print(f"{args.model}, batch {args.batch_size}: Python function calls per optimizer step, epochs 2..{args.epochs}: {cells}")  # fmt: skip
            if args.record:
                record(MARKER, [f"| {date.today()} | {machine(device)} | {command} | {args.model}, batch {args.batch_size}, "
                        f"{args.epochs} epochs | Python calls per optimizer step: {cells} |"], RESULTS_MD)  # fmt: skip
            return
        rounds, names = [], list(sides)
        for r in range(args.rounds):  # a rotating order: drift in the machine lands on every side
            order = names[r % len(names) :] + names[: r % len(names)]
            rounds.append({side: sides[side](config(overrides, Path(tmp) / f"{side}{r}")) for side in order})  # fmt: skip

    def median(epochs: list[float]) -> float:
        return statistics.median(epochs[1:] or epochs)

    def ratio(a: str, b: str) -> tuple[float, list[float]]:
        each = [median(p[a]["epochs_s"]) / median(p[b]["epochs_s"]) for p in rounds]
        return statistics.median(each), each

    def least_disturbed(a: str, b: str) -> float:
        """The fastest epoch 2..N of every round against the other side's: the least noise."""

        def fastest(side):
            return min(min(p[side]["epochs_s"][1:] or p[side]["epochs_s"]) for p in rounds)

        return fastest(a) / fastest(b)

    seconds = {
        side: statistics.median(median(p[side]["epochs_s"]) for p in rounds) for side in sides
    }
    startups = {side: statistics.median(p[side]["startup_s"] for p in rounds) for side in sides}
    ratios = {
        "framework / plain loop": ratio("framework", "plain"),  # the goal: <= 1.05
        "lightning / plain loop": ratio("lightning", "plain"),  # Lightning's own floor
        "framework / lightning": ratio("framework", "lightning"),  # what the framework adds to it
        "command / plain loop": ratio("command", "plain"),  # python -m fmnist_exp, as users run it
    }
    if "framework_k1" in sides:
        ratios["framework_k1 / plain loop"] = ratio("framework_k1", "plain")
    if args.compile:
        ratios["plain_compiled / plain loop"] = ratio("plain_compiled", "plain")
        ratios["framework_compiled / plain loop"] = ratio("framework_compiled", "plain")
    print(f"{device_name(device)}: {args.model}, batch {args.batch_size}, Adam 1e-3, {args.epochs} epochs, "
          f"precision {args.precision}, {args.rounds} rounds")  # fmt: skip
    print(
        f"{'round':>5} {'side':18} {'start-up s':>10} {'epoch s (median 2..N)':>22} {'val acc':>8}  epochs s"
    )
    for r, pair in enumerate(rounds, start=1):
        for side, run in pair.items():
            print(f"{r:5d} {side:18} {run['startup_s']:10.2f} {median(run['epochs_s']):22.2f} "
                  f"{run['val_acc']:8.4f}  {' '.join(f'{e:.2f}' for e in run['epochs_s'])}")  # fmt: skip
    for name, (value, each) in ratios.items():
        a, b = (side.split()[0] for side in name.split(" / "))
        print(f"{name}, per epoch: {value:.3f} (rounds: {', '.join(f'{x:.3f}' for x in each)}; "
              f"least-disturbed epochs: {least_disturbed(a, b):.3f})")  # fmt: skip
    if args.record:

        def cell(name: str) -> str:
            value, each = ratios[name]
            a, b = (side.split()[0] for side in name.split(" / "))
            return f"{value:.3f} ({min(each):.2f}-{max(each):.2f}; fastest {least_disturbed(a, b):.3f})"

        cells = "; ".join(f"{name.split(' / ')[0]} {cell(name)}" for name in ratios
                          if name.endswith("/ plain loop"))  # fmt: skip
        record(MARKER, [f"| {date.today()} | {machine(device)} | {command} | {args.model}, batch {args.batch_size}, "
                        f"{args.epochs} epochs x {args.rounds} rounds, {args.precision} | plain {seconds['plain']:.2f} s/epoch; "
                        f"per epoch / plain loop: {cells}; start-up s: "
                        f"{', '.join(f'{side} {v:.1f}' for side, v in startups.items())} |"], RESULTS_MD)  # fmt: skip


def run(argv: list[str]) -> int:
    """main(argv) as the command runs it: exit status 0, or 2 with one line for a bad --model,
    override or setting (argparse's own errors exit 2 too)."""
    try:
        main(argv)
    except (HydraException, UserError) as exc:
        said = exc.__cause__ if isinstance(exc.__cause__, UserError) else exc  # not hydra's wrapper
        print(f"benchmark: {str(said).split('Config search path')[0].strip()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore")  # Lightning's hints about workers and log intervals
    sys.exit(run(sys.argv[1:]))
