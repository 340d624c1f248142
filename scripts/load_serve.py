"""Load test: our web app vs `mlflow models serve`, same model, same requests, one invocation.

    python scripts/load_serve.py [--model-uri best] [--requests 500] [--concurrency 8] [--batch 1]

Starts both servers on 127.0.0.1 (free ports), waits until each answers, then sends the same JSON
body ({"inputs": [batch, 1, 28, 28]} built from real test images) N times at concurrency C to each:
POST /predict/pixels (ours) and POST /invocations (MLflow). Also times ours on a PNG upload
(POST /predict), the path the web page uses. Prints throughput and p50/p99 latency side by side;
--record appends the rows to docs/benchmarks.md.
"""

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- load_serve.py --record adds rows above this line -->"
sys.path.insert(0, str(ROOT / "src"))
from record import record  # noqa: E402  (scripts/record.py)

from fmnist_exp import inference  # noqa: E402
from fmnist_exp.data.dataset import DEBIAN_DIR, read_idx  # noqa: E402
from fmnist_exp.paths import default_tracking_uri  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(command: list[str], health_url: str, env: dict, timeout_s: float = 180):
    """Run a server for the duration of the block, once it answers health_url."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"server exited ({process.returncode}): {' '.join(command)}\n{process.stderr.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"server did not answer {health_url} within {timeout_s:.0f}s: {' '.join(command)}"
                )
            try:
                if requests.get(health_url, timeout=1).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy starting
                time.sleep(0.5)
        yield
    finally:
        process.terminate()
        process.wait()


def hammer(send, n: int, concurrency: int) -> dict[str, float]:
    """send(session) n times from `concurrency` threads; every answer must be 200."""

    def worker(count: int) -> list[float]:
        session, latencies = requests.Session(), []
        for _ in range(count):
            t0 = time.perf_counter()
            response = send(session)
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()
        return latencies

    send(requests.Session()).raise_for_status()  # warm-up
    shares = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(x for part in pool.map(worker, shares) for x in part)
    wall = time.perf_counter() - started
    return {
        "req_per_s": n / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-uri", default="best")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="images per JSON request")
    parser.add_argument(
        "--record", action="store_true", help="append the rows to docs/benchmarks.md"
    )
    args = parser.parse_args()

    tracking_uri = default_tracking_uri()
    model_uri = args.model_uri
    if model_uri == "best":
        model_uri = inference.best_run_uri(tracking_uri, "fashion-mnist")
    images = read_idx(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz", 3)[: args.batch]
    body = json.dumps({"inputs": images[:, None].astype(float).tolist()})
    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    headers = {"Content-Type": "application/json"}
    env = (
        os.environ
        | {  # mlflow models serve execs `uvicorn` by name: put this venv's bin/ on PATH
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )

    ours_port, mlflow_port = free_port(), free_port()
    ours = [sys.executable, "-m", "fmnist_exp.serve", f"model_uri={model_uri}", f"port={ours_port}"]
    theirs = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
              "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)]  # fmt: skip
    results = {}
    with serving(ours, f"http://127.0.0.1:{ours_port}/health", env):
        url = f"http://127.0.0.1:{ours_port}"
        results["fmnist_exp.serve  POST /predict/pixels (JSON)"] = hammer(
            lambda s: s.post(f"{url}/predict/pixels", data=body, headers=headers),
            args.requests,
            args.concurrency,
        )
        results["fmnist_exp.serve  POST /predict (PNG upload)"] = hammer(
            lambda s: s.post(f"{url}/predict", files={"file": ("x.png", png.getvalue())}),
            args.requests,
            args.concurrency,
        )
    with serving(theirs, f"http://127.0.0.1:{mlflow_port}/ping", env):
        url = f"http://127.0.0.1:{mlflow_port}"
        results["mlflow models serve  POST /invocations (JSON)"] = hammer(
            lambda s: s.post(f"{url}/invocations", data=body, headers=headers),
            args.requests,
            args.concurrency,
        )

    base = results["mlflow models serve  POST /invocations (JSON)"]["req_per_s"]
    print(
        f"model {model_uri}; {args.requests} requests, concurrency {args.concurrency}, {args.batch} image(s) each"
    )
    print(f"{'server / endpoint':48} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs mlflow':>9}")
    for name, r in results.items():
        print(
            f"{name:48} {r['req_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['req_per_s'] / base:8.2f}x"
        )
    if args.record:
        command = "python scripts/load_serve.py " + " ".join(sys.argv[1:])
        machine = f"{platform.machine()}, {os.cpu_count()} cores, CPU"
        lines = [f"| {date.today()} | {machine} | `{command}` | {name} | {r['req_per_s']:.1f} | "
                 f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for name, r in results.items()]  # fmt: skip
        record(MARKER, lines)


if __name__ == "__main__":
    main()
