"""Checkpoints that survive the disk: each one is written beside its final name and renamed over it
only once complete, so a full disk or a kill mid-save leaves the previous file whole.

Lightning's own TorchCheckpointIO writes through fsspec, which may stage the file in the system temp
folder and copy it across filesystems over the old one: a failure there truncates the checkpoint
that resume= needs, and the error names the temporary file. Here the temporary file lives in the
checkpoint's own folder (the rename is atomic), and an error names the checkpoint.
"""

import os
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with an atomic, fsync'd replace in the checkpoint's own folder."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except OSError as exc:
            Path(partial).unlink(missing_ok=True)
            exc.filename = str(path)  # the checkpoint, not the temporary name
            raise
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
