"""On a machine with a GPU: the documented command trains there. Skipped cleanly without one."""

import pytest
import torch
from conftest import run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_trainer_gpu_trains_on_the_gpu(tmp_path, real_data_dir):
    done = run_cli("model=lenet_bn", "trainer=gpu", "trainer.max_epochs=1", "++trainer.limit_train_batches=20",
                   f"data.data_dir={real_data_dir}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                   f"hydra.run.dir={tmp_path}/run")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GPU available: True (cuda), used: True" in done.stdout + done.stderr
