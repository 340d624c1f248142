"""On a machine with a GPU: the documented command trains there. Skipped cleanly without one."""

import pytest
import torch
from conftest import run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.slow
def test_trainer_gpu_trains_on_the_gpu(tmp_path, real_data_dir):
    done = run_cli("model=lenet_bn", "trainer=gpu", "trainer.max_epochs=1", "++trainer.limit_train_batches=20",
                   f"data.data_dir={real_data_dir}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                   f"hydra.run.dir={tmp_path}/run")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GPU available: True (cuda), used: True" in done.stdout + done.stderr


def test_device_batches_equal_cpu_batches_for_the_same_seed():
    from fmnist_exp.data.datamodule import TensorBatches

    images = torch.randint(0, 256, (600, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(600)
    augment = {"hflip": True, "crop_padding": 2, "erase_prob": 0.5}
    on_cpu = TensorBatches(images, labels, 128, shuffle=True, seed=5, augment=augment)
    on_gpu = TensorBatches(images.cuda(), labels.cuda(), 128, shuffle=True, seed=5, augment=augment)
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(on_cpu, on_gpu, strict=True):
        assert x_gpu.is_cuda and torch.equal(x_gpu.cpu(), x_cpu) and torch.equal(y_gpu.cpu(), y_cpu)


@pytest.mark.slow
def test_bf16_mixed_trains_on_the_gpu(tmp_path, real_data_dir):
    done = run_cli("model=lenet_bn", "trainer=gpu", "trainer.precision=bf16-mixed", "trainer.max_epochs=1",
                   "++trainer.limit_train_batches=20", f"data.data_dir={real_data_dir}",
                   f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={tmp_path}/run")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
