"""`make bench` runs here: scripts/benchmark.py trains every side on the real data and prints
their ratios. Seconds are not asserted (the machine is noisy); that every side trained is."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO


@pytest.mark.slow
def test_benchmark_trains_every_side_and_prints_the_ratios(real_data_dir):
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--model", "mlp", "--batch-size", "1024", "--epochs", "2", "--rounds", "1",
         "--steps-per-call", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=os.environ | {"FMNIST_DATA_DIR": str(real_data_dir)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(
        r"^\s+1 (plain|lightning|framework|command|framework_k1|plain_compiled|framework_compiled)\s+[\d.]+\s+[\d.]+\s+([\d.]+)",
        done.stdout, re.M,
    )  # fmt: skip
    sides = [
        "command",
        "framework",
        "framework_compiled",
        "framework_k1",
        "lightning",
        "plain",
        "plain_compiled",
    ]
    assert sorted(side for side, _ in rows) == sides, done.stdout
    assert all(float(acc) > 0.75 for _, acc in rows), rows  # chance is 0.10
    accuracy = dict(rows)  # 4 steps per call or 1, in process or not: the same training
    assert accuracy["framework"] == accuracy["command"] == accuracy["framework_k1"]
    for name in ("framework / plain loop", "lightning / plain loop", "framework / lightning",
                 "command / plain loop", "framework_k1 / plain loop", "plain_compiled / plain loop",
                 "framework_compiled / plain loop"):  # fmt: skip
        assert re.search(rf"^{name}, per epoch: \d+\.\d{{3}} ", done.stdout, re.M), name


@pytest.fixture(scope="module")
def benchmark():
    """scripts/benchmark.py as a module (it is a script, not part of the package)."""
    with pytest.MonkeyPatch.context() as scoped:
        scoped.syspath_prepend(str(REPO / "scripts"))  # its `from record import record`
        path = REPO / "scripts" / "benchmark.py"
        spec = importlib.util.spec_from_file_location("benchmark_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "args, said",
    [
        (["--model", "nosuch"], "Could not find 'model/nosuch'"),
        (["--batch-size", "0"], "data.batch_size=0 must be a positive number"),
        (["--rounds", "0"], "--rounds 0 --epochs 3: both must be 1 or more"),
        (["--device", "xyz"], "argument --device: invalid choice: 'xyz'"),
        pytest.param(
            ["--device", "cuda"],
            "--device cuda: this torch",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(), reason="a CUDA GPU is visible here"
            ),
        ),
        (["--calls", "--epochs", "1"], "--epochs 1 leaves none; give --epochs 2 or more"),
        (["--steps-per-call", "0"], "--steps-per-call 0: give auto or a whole number, 1 or more"),
        (["--steps-per-call", "many"], "--steps-per-call many: give auto or a whole number"),
    ],
)
def test_benchmark_bad_arguments_end_in_one_message(args, said, benchmark, real_data_dir, monkeypatch, capsys):  # fmt: skip
    """In the test process, through run(): what `python scripts/benchmark.py ARGS` exits with."""
    monkeypatch.setenv("FMNIST_DATA_DIR", str(real_data_dir))
    try:
        code = benchmark.run(args)
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    assert code == 2 and said in capsys.readouterr().err
