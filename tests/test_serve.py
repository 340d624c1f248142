"""The web app (FastAPI's test client, a real uvicorn, a real browser) and `mlflow models serve`."""

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from conftest import REPO, wait_until_it_answers
from fastapi.testclient import TestClient
from PIL import Image

from fmnist_exp import inference, serve, web_app
from fmnist_exp.data.dataset import CLASS_NAMES
from fmnist_exp.web_app import create_app

# `mlflow models serve` execs `uvicorn` by name: the venv's bin/ must be on PATH even when the venv
# is not activated (make test runs .venv/bin/python directly).
VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(trained_model):
    return inference.load(f"runs:/{trained_model['run_id']}/model", trained_model["tracking_uri"])


@pytest.fixture(scope="module")
def client(model):
    return TestClient(create_app(model, max_upload_bytes=50_000, max_batch=8))


@pytest.fixture(scope="module")
def expected(model, real_data):
    """What the model says about the first 8 test images, computed without the server."""
    images = real_data.test_images[:8]
    return images[:, 0].numpy(), model.probabilities(images)


def test_page_health_and_one_upload(client, expected, model):
    images, probs = expected
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "/predict" in page.text
    assert client.get("/health").json() == {"status": "ok", "model_uri": model.uri}
    answer = client.post("/predict", files={"file": ("shoe.png", png_bytes(images[0]))}).json()
    assert (
        answer["label"] == int(probs[0].argmax())
        and answer["class_name"] == CLASS_NAMES[answer["label"]]
    )
    assert list(answer["probabilities"]) == list(CLASS_NAMES)
    assert np.allclose(list(answer["probabilities"].values()), probs[0], atol=1e-5)
    assert answer["image"].startswith("data:image/png;base64,")  # the 28x28 the model saw


def test_batch_upload_and_raw_pixels(client, expected):
    images, probs = expected
    files = [("files", (f"{i}.png", png_bytes(image))) for i, image in enumerate(images)]
    batch = client.post("/predict/batch", files=files).json()["predictions"]
    assert [p["filename"] for p in batch] == [f"{i}.png" for i in range(8)]
    assert [p["label"] for p in batch] == probs.argmax(1).tolist()
    for body in (
        {"inputs": images[:, None].tolist()},
        {"inputs": images.tolist()},
    ):  # [N,1,28,28] | [N,28,28]
        answer = client.post("/predict/pixels", json=body).json()["predictions"]
        assert [p["label"] for p in answer] == probs.argmax(1).tolist()


@pytest.mark.parametrize(
    "request_kwargs, path, status, message",
    [
        ({"files": {"file": ("notes.txt", b"hello")}}, "/predict", 400, "not an image format"),
        ({"files": {"file": ("cut.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)}}, "/predict", 400, "cut.png"),
        ({"files": {"file": ("big.png", b"\0" * 60_000)}}, "/predict", 413, "limit"),
        ({"files": {"other": ("x.png", b"")}}, "/predict", 422, "file"),
        ({"json": {"inputs": [[1, 2, 3]]}}, "/predict/pixels", 422, "expected [N, 1, 28, 28]"),
        ({"json": {"inputs": [[[0] * 28] * 27]}}, "/predict/pixels", 422, "[1, 27, 28]"),
        ({"json": {"inputs": [[[300] * 28] * 28]}}, "/predict/pixels", 422, "0..255"),
        ({"json": {"inputs": [[1, 2], [3]]}}, "/predict/pixels", 422, "rectangular"),
        ({"json": {"inputs": [[[[0] * 28] * 28]] * 9}}, "/predict/pixels", 422, "N <= 8"),
        ({"json": {"pixels": []}}, "/predict/pixels", 422, "inputs"),
        ({"files": {"file": ("x.png", bytes(range(256)))}}, "/predict/pixels", 422, "sent as multipart/form-data"),
        ({"content": b"not json", "headers": {"content-type": "application/json"}}, "/predict/pixels", 422, "JSON decode error"),
    ],
    ids=["not-an-image", "corrupt-png", "too-large", "no-file-field", "flat-shape", "27-rows",
         "out-of-range", "ragged", "too-many", "wrong-key", "a-picture-as-multipart", "not-json"],
)  # fmt: skip
def test_bad_requests_get_a_status_and_a_message(client, request_kwargs, path, status, message):
    response = client.post(path, **request_kwargs)
    assert response.status_code == status
    assert message in str(response.json()["detail"])
    assert client.get("/health").status_code == 200  # and the server goes on


def test_a_huge_canvas_and_a_chunked_body_over_the_limit_get_413(client):
    buffer = io.BytesIO()
    Image.new("1", (10_000, 8_000)).save(buffer, format="PNG")  # 80 megapixels in a few kB
    response = client.post("/predict", files={"file": ("huge.png", buffer.getvalue())})
    assert response.status_code == 413, response.text
    assert "10000 x 8000 pixels" in response.json()["detail"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        yield b'{"inputs": ['
        for _ in range(400):
            yield b"[" + b"0," * 500 + b"0],"
        yield b"[0]]}"

    response = client.post(
        "/predict/pixels", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("bad", ["port=99999", "port=http", "max_upload_mb=-1", "max_batch=0"])
def test_bad_serve_options_are_one_paragraph(bad, capsys):
    assert serve.main([bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: serve: {bad.split('=')[0]}=") and "Traceback" not in err


def test_a_port_in_use_is_one_paragraph_before_serving(trained_model, capsys):
    """Bound before it says it serves: a port another program holds is exit 2, not "serving ..."
    then exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = serve.main([f"port={port}", f"tracking_uri={trained_model['tracking_uri']}"])
    out, err = capsys.readouterr()
    assert code == 2 and "serving" not in out
    assert f"error: serve: cannot listen on 127.0.0.1:{port}" in err and f"port={port + 1}" in err


def test_an_unexpected_error_is_a_500_not_a_dead_server(model, expected):
    class Broken:
        uri, class_names = "broken", CLASS_NAMES

        def probabilities(self, images):
            raise RuntimeError("boom")

    client = TestClient(create_app(Broken()), raise_server_exceptions=False)
    response = client.post("/predict", files={"file": ("x.png", png_bytes(expected[0][0]))})
    assert response.status_code == 500 and "boom" in response.json()["detail"]
    assert client.get("/health").status_code == 200


# --- real servers on 127.0.0.1 ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str], url: str, tracking_uri: str, timeout_s: float = 120):
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": VENV_PATH},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_until_it_answers(url, process, timeout_s)
    return process


@pytest.fixture(scope="module")
def live_server(trained_model):
    """`python -m fmnist_exp.serve` in a subprocess, as a user starts it (default host)."""
    port = free_port()
    command = [sys.executable, "-m", "fmnist_exp.serve", "model_uri=best", f"port={port}"]
    process = start_server(
        command, f"http://127.0.0.1:{port}/health", trained_model["tracking_uri"]
    )
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_real_uvicorn_serves_best_on_localhost_only(live_server, trained_model, expected):
    images, probs = expected
    assert requests.get(f"{live_server}/health").json()["model_uri"] == (
        f"runs:/{trained_model['run_id']}/model"
    )
    answer = requests.post(
        f"{live_server}/predict", files={"file": ("a.png", png_bytes(images[1]))}
    )
    assert answer.json()["label"] == int(probs[1].argmax())
    port = int(live_server.rsplit(":", 1)[1])
    addresses = [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    for address in {a for a in addresses if not a.startswith("127.")}:  # not bound beyond loopback
        with socket.socket() as s:
            assert s.connect_ex((address, port)) != 0


def test_unknown_model_uri_fails_at_start_up(trained_model, monkeypatch, capsys):
    """`python -m fmnist_exp.serve model_uri=...` through its main(), in the test process."""
    import uvicorn

    def serve_anyway(*args, **kwargs):
        raise AssertionError("it started serving an unknown model")

    monkeypatch.setattr(uvicorn, "run", serve_anyway)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_model["tracking_uri"])
    assert serve.main(["model_uri=models:/nope/3", f"port={free_port()}"]) == 2
    assert "error: model_uri=models:/nope/3" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_our_model(trained_model, expected):
    """`make mlflow-serve MODEL=...` as the README says, from a shell whose PATH lacks the venv
    (MLflow execs `uvicorn` by name: the target puts the venv's bin/ first)."""
    images, probs = expected
    port = free_port()
    uri = f"runs:/{trained_model['run_id']}/model"
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    process = subprocess.Popen(
        ["make", "-s", "mlflow-serve", f"MODEL={uri}", f"PORT={port}"], cwd=REPO,
        env={**os.environ, "MLFLOW_TRACKING_URI": trained_model["tracking_uri"], "PATH": path},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_it_answers(f"http://127.0.0.1:{port}/ping", process, 120)
        body = {"inputs": images[:, None].astype(np.float32).tolist()}  # [N, 1, 28, 28], 0..255
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        assert torch.allclose(torch.tensor(answer.json()["predictions"]), probs, atol=1e-5)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # make, mlflow and uvicorn's workers
        process.wait(timeout=30)


def test_make_tracking_server_uses_the_port_it_is_given():
    def planned(*args: str) -> str:
        return subprocess.run(["make", "-n", "tracking-server", *args], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    assert "PORT=5123 scripts/tracking_server.sh" in planned("PORT=5123")
    assert "PORT=5001 scripts/tracking_server.sh" in planned()  # its own default, not the UI's


# --- a real browser -----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)


def chrome():
    """Headless Chromium driven by Selenium, its console log kept."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=900,760",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (`make setup` installs them where apt-get can run as root)",
)
def test_browser_uploads_a_picture_and_reads_the_label(live_server, expected, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images, probs = expected
    picture = tmp_path / "ankle_boot.png"
    Image.fromarray(images[0]).resize((280, 280)).save(picture)  # a bigger picture, as users have
    driver = chrome()
    try:
        driver.get(live_server + "/")
        seen = driver.find_element(By.ID, "seen")  # no picture yet: not shown (no broken image)
        assert not seen.is_displayed() and not driver.find_element(By.ID, "result").is_displayed()
        driver.find_element(By.ID, "file").send_keys(str(picture))
        label = WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "label").text or None
        )
        assert label == CLASS_NAMES[int(probs[0].argmax())]
        bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert len(bars) == 10
        shot = Path(os.environ.get("FMNIST_SCREENSHOT", tmp_path / "serve_page.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()


HOSTILE = "<img src=x onerror=document.title='owned'>"


@pytest.fixture
def hostile_server():
    """Our app in a real uvicorn (a thread here) around a model whose classes came from folders
    named by a stranger: one is an HTML element with an inline event handler."""
    import threading

    import uvicorn

    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3), torch.nn.Softmax(1))
    names = (HOSTILE, "<b>bold</b>", "Кофта")
    model = inference.LoadedModel(network, "runs:/hostile/model", names)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(300):
        if server.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", names
    server.should_exit = True
    thread.join(timeout=30)


def test_the_page_has_a_policy_against_inline_handlers(client):
    policy = client.get("/").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert "unsafe-inline" not in policy


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"
)
def test_class_and_file_names_are_shown_as_text_in_a_real_browser(hostile_server, tmp_path):
    """One upload (the result line and the bars) and a batch (the table): every name shows
    literally, no element is made from it, and its handler never runs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, names = hostile_server
    pictures = []
    for name in ("<img src=y onerror=alert(1)>.png", "plain.png"):
        Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / name)
        pictures.append(tmp_path / name)
    driver = chrome()
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(pictures[0]))
        label = WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "label").text or None
        )
        assert label in names
        shown = [
            b.find_element(By.TAG_NAME, "span").text
            for b in driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
        ]
        assert shown == list(names)
        driver.find_element(By.ID, "file").send_keys("\n".join(map(str, pictures)))
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#batch tbody tr")
        )
        cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#batch tbody td")]
        assert cells[0] == pictures[0].name and cells[1] in names
        assert not driver.find_elements(
            By.CSS_SELECTOR, "#result img:not(#seen), #batch img, #bars img, b"
        )
        assert driver.title != "owned"
        assert not [e for e in driver.get_log("browser") if "owned" in e["message"]]
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_ui_opens_on_the_runs_table_and_runs_light(trained_model):
    """`make ui` (python -m fmnist_exp.ui): the printed address names the experiment's runs table in
    the machine-learning view, sorted by test/acc; the server is one worker without MLflow's GenAI
    job runners (two processes in all: the CLI and its uvicorn worker)."""
    import mlflow

    from fmnist_exp.tracking.sweep import processes_under

    port = free_port()
    command = [sys.executable, "-m", "fmnist_exp.ui", f"port={port}"]
    process = start_server(
        command, f"http://127.0.0.1:{port}/health", trained_model["tracking_uri"]
    )
    try:
        client = mlflow.MlflowClient(trained_model["tracking_uri"])
        experiment = client.get_experiment_by_name("fashion-mnist")
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        assert len(processes_under(process.pid)) == 1  # one uvicorn worker, no job runners
        assert requests.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        for pid in [*processes_under(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        out = process.communicate(timeout=30)[0]
    address = (f"MLflow UI: http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?"
               "workflowType=machine_learning&orderByKey=metrics.%60val%2Facc_best%60&orderByAsc=false")  # fmt: skip
    assert address in out


def test_pictures_decode_a_few_at_a_time_and_health_answers_meanwhile(model, expected, monkeypatch):
    """Six slow decodes sent at once run DECODES_AT_ONCE at a time in worker threads, and /health,
    answered on the event loop, does not wait for them."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    running, most, lock = 0, 0, threading.Lock()
    decode = web_app.pictures.decode

    def slow_decode(data, name, *args):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.5)
        with lock:
            running -= 1
        return decode(data, name, *args)

    monkeypatch.setattr(web_app.pictures, "decode", slow_decode)
    client = TestClient(create_app(model))
    body = png_bytes(expected[0][0])
    with ThreadPoolExecutor(6) as pool:
        answers = [
            pool.submit(client.post, "/predict", files={"file": ("a.png", body)}) for _ in range(6)
        ]
        time.sleep(0.2)
        assert client.get("/health").status_code == 200
        still_decoding = running  # answered while the decodes were under way, not after them
        assert all(a.result().status_code == 200 for a in answers)
    assert most == web_app.DECODES_AT_ONCE and still_decoding > 0
