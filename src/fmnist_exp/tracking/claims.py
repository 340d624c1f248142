"""One run, one writer: file locks (flock) that a training process holds for as long as it trains.

- Every run holds its output folder (`<output_dir>/.train.lock`, exclusive). `resume=<run_id>` or
  `resume=last` takes the run's folder without waiting: while the original process still trains
  there, it is refused in one paragraph instead of training twice into one run and folder.
- Every run holds its config hash shared (`<store folder>/.claims/<hash>.lock`); `skip_finished=true`
  takes it exclusively and waits for it, then decides: two sweeps with skip_finished at once train
  each job once, and the second finds it FINISHED and reuses it.

Locks belong to the process and end with it (a `kill -9` included), so none is ever left stale. They
are local to one machine: jobs on other hosts (SLURM, a shared tracking server) are not covered.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fmnist_exp.errors import UserError
from fmnist_exp.tracking.store import sqlite_path

_held: list = []  # open lock files of the run in progress; closing one releases its lock


def claims_folder(tracking_uri: str, root: Path) -> Path:
    """Beside a sqlite store (every process on that store sees it), else under <root>/outputs/."""
    db = sqlite_path(tracking_uri)
    return (db.parent if db is not None else Path(root) / "outputs") / ".claims"


def _other_ddp_process() -> bool:
    """DDP's extra processes run train() too, for the same run: rank 0 holds the claims."""
    return any(int(os.environ.get(k, "0") or 0) != 0 for k in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _lock(path: Path, mode: int, wait: bool) -> bool:
    if _other_ddp_process():
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open until the run ends
    try:
        fcntl.flock(handle, mode | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return False
    if mode == fcntl.LOCK_EX:
        handle.seek(0), handle.truncate(), handle.write(str(os.getpid())), handle.flush()
    _held.append(handle)
    return True


def config(folder: Path, digest: str, exclusive: bool) -> None:
    """Hold this config hash: shared by any run, exclusive (waiting) for skip_finished=true."""
    path = folder / f"{digest}.lock"
    if exclusive and not _lock(path, fcntl.LOCK_EX, wait=False):
        print(f"waiting: another process is training this config ({path}); skip_finished=true "
              f"decides once it ends")  # fmt: skip
        _lock(path, fcntl.LOCK_EX, wait=True)
    elif not exclusive:  # held while another process's skip_finished trains it: go on unclaimed
        _lock(path, fcntl.LOCK_SH, wait=False)


def folder(output_dir: Path, run_id: str | None = None) -> None:
    """Hold the run's folder, without waiting: a live process training there is a UserError."""
    path = Path(output_dir) / ".train.lock"
    if not _lock(path, fcntl.LOCK_EX, wait=False):
        pid = path.read_text().strip() or "?"
        raise UserError(
            f"run {run_id or ''} is being trained right now by another process (pid {pid}) in "
            f"{output_dir}; resuming it too would train twice into one run. Wait for it to end "
            f"(or stop it), then resume."
        )


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Every lock taken inside is released at the end (train() runs inside one)."""
    start = len(_held)
    try:
        yield
    finally:
        while len(_held) > start:
            _held.pop().close()
