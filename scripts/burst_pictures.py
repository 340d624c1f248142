"""Large pictures in a burst: what six at once cost the web app, this checkout beside another.

    python scripts/burst_pictures.py [--model-uri best] [--before REV] [--at-once 6] [--rounds 2]

Starts `python -m fmnist_exp.serve` on 127.0.0.1 for each side (this checkout, and with --before a
git worktree of REV), then, per kind of picture (a 7000x7000 PNG, the same as a JPEG, a 4000x4000
PNG), posts --at-once copies to /predict at the same moment while another thread asks /health every
0.1 s. Prints, per side and kind: the burst's wall time, the slowest /health answer during it, the
server's peak memory (VmHWM) and its memory 3 s after the burst (VmRSS), and the status codes.
Sides alternate in rounds; each round starts fresh servers, so the peaks are the burst's own.
"""

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from fmnist_exp.paths import default_tracking_uri  # noqa: E402
from fmnist_exp.serve import listening_socket  # noqa: E402


def picture(side: int, kind: str) -> bytes:
    """A light canvas with a dark garment-sized shape: compresses to a few hundred kB."""
    canvas = Image.new("RGB", (side, side), (245, 245, 245))
    ImageDraw.Draw(canvas).rectangle(
        (side // 4, side // 5, 3 * side // 4, 4 * side // 5), (40, 40, 90)
    )
    buffer = io.BytesIO()
    canvas.save(buffer, format=kind, quality=85) if kind == "JPEG" else canvas.save(
        buffer, format=kind
    )
    return buffer.getvalue()


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with listening_socket("127.0.0.1", 0) as sock:
        return sock.getsockname()[1]


@contextmanager
def server(src: Path, model_uri: str, tracking_uri: str):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "MLFLOW_TRACKING_URI": tracking_uri}
    command = [sys.executable, "-m", "fmnist_exp.serve", f"model_uri={model_uri}", f"port={port}",
               "max_upload_mb=20"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(f"server exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer in 120 s")
            time.sleep(0.3)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def burst(url: str, pid: int, body: bytes, name: str, at_once: int) -> dict:
    slowest, done = 0.0, threading.Event()

    def watch():
        nonlocal slowest
        while not done.is_set():
            started = time.perf_counter()
            requests.get(f"{url}/health", timeout=120)
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        codes = list(pool.map(
            lambda _: requests.post(f"{url}/predict", files={"file": (name, body)}, timeout=600).status_code,
            range(at_once),
        ))  # fmt: skip
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    peak = memory_mb(pid, "VmHWM")
    time.sleep(3)
    return {"wall_s": wall, "health_s": slowest, "peak_mb": peak, "after_mb": memory_mb(pid, "VmRSS"),
            "codes": sorted(set(codes))}  # fmt: skip


def worktree(rev: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fmnist-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev],
                   check=True, capture_output=True)  # fmt: skip
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-uri", default="best")
    parser.add_argument("--before", help="a git revision to measure beside this checkout")
    parser.add_argument("--at-once", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    kinds = {"png 7000x7000": picture(7000, "PNG"), "jpeg 7000x7000": picture(7000, "JPEG"),
             "png 4000x4000": picture(4000, "PNG")}  # fmt: skip
    sides = {"this checkout": ROOT / "src"}
    before = worktree(args.before) if args.before else None
    if before:
        sides[f"before ({args.before})"] = before / "src"
    print(f"{args.at_once} pictures at once; sizes: "
          + ", ".join(f"{k} {len(v) // 1024} kB" for k, v in kinds.items()))  # fmt: skip
    try:
        for r in range(args.rounds):
            for side, src in sides.items() if r % 2 == 0 else reversed(sides.items()):
                for kind, body in kinds.items():
                    with server(src, args.model_uri, default_tracking_uri()) as (url, pid):
                        found = burst(
                            url, pid, body, f"{kind.split()[0]}.{kind.split()[0]}", args.at_once
                        )
                    print(f"round {r + 1}  {side:24s} {kind:15s} burst {found['wall_s']:6.2f} s  "
                          f"slowest /health {found['health_s']:5.2f} s  peak {found['peak_mb']:7.0f} MB  "
                          f"3 s later {found['after_mb']:6.0f} MB  status {found['codes']}", flush=True)  # fmt: skip
    finally:
        if before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                           capture_output=True)  # fmt: skip


if __name__ == "__main__":
    main()
