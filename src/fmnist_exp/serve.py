"""`python -m fmnist_exp.serve model_uri=best host=127.0.0.1 port=8000` (or `make serve`): a web app.

  GET  /               a page: choose or drop pictures -> the 28x28 the model sees + class probabilities
  POST /predict        multipart field `file` (PNG/JPEG, any size) -> {label, class_name, probabilities, image}
  POST /predict/batch  multipart field `files` (several pictures) -> {predictions: [...]}
  POST /predict/pixels JSON {"inputs": [N, 1, 28, 28] or [N, 28, 28], raw 0..255} -> {predictions: [...]}
  GET  /health         {status, model_uri}

Bad requests get a status and a message, never a dead server: unreadable image 400, upload over
max_upload_mb 413, wrong array shape or values 422, anything unexpected 500.
"""

import base64
import io
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel

from fmnist_exp import cli, inference
from fmnist_exp.dataset import CLASS_NAMES
from fmnist_exp.errors import DataError, UserError
from fmnist_exp.inputs import SIZE, decode_picture
from fmnist_exp.paths import default_tracking_uri

OPTIONS = {
    "model_uri": "best",  # best | runs:/<id>/model | models:/<name>/<version> | a .ckpt path
    "host": "127.0.0.1",  # 0.0.0.0 to accept other machines
    "port": "8000",
    "experiment": "fashion-mnist",  # where model_uri=best looks
    "tracking_uri": "",  # default: $MLFLOW_TRACKING_URI, else the project's sqlite store
    "max_upload_mb": "5",  # larger requests get 413
    "max_batch": "256",  # images per request, at most
}
PAGE = Path(__file__).with_name("serve_page.html")


class PixelsRequest(BaseModel):
    inputs: list  # [N, 1, 28, 28] or [N, 28, 28], 0..255 (MLflow's `inputs` format)


def _png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def create_app(model: inference.LoadedModel, max_upload_bytes: int = 5 << 20, max_batch: int = 256):
    app = FastAPI(title="fmnist-exp", description=__doc__)
    page = PAGE.read_text()

    def predictions(images: np.ndarray) -> list[dict]:
        probs = model.probabilities(torch.from_numpy(images)).tolist()
        return [
            {
                "label": int(np.argmax(p)),
                "class_name": CLASS_NAMES[int(np.argmax(p))],
                "probabilities": dict(zip(CLASS_NAMES, (round(v, 6) for v in p), strict=True)),
            }
            for p in probs
        ]

    async def read_picture(upload: UploadFile) -> np.ndarray:
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(
                413, f"{upload.filename}: over the {max_upload_bytes:,}-byte limit."
            )
        try:
            return decode_picture(data, upload.filename or "upload")
        except DataError as exc:
            raise HTTPException(400, str(exc)) from exc

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        limit = max_upload_bytes * (max_batch if request.url.path == "/predict/batch" else 1)
        if length and length.isdigit() and int(length) > limit + 64 * 1024:  # + multipart headers
            return JSONResponse({"detail": f"request of {int(length):,} bytes is over the limit "
                                 f"({max_upload_bytes:,} bytes per image)."}, status_code=413)  # fmt: skip
        return await call_next(request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return JSONResponse(
            {"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
        )

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_uri": model.uri}

    @app.post("/predict")
    async def predict(file: Annotated[UploadFile, File()]) -> dict:
        image = await read_picture(file)
        return predictions(image[None, None])[0] | {"image": _png_data_url(image)}

    @app.post("/predict/batch")
    async def predict_batch(files: Annotated[list[UploadFile], File()]) -> dict:
        if len(files) > max_batch:
            raise HTTPException(413, f"{len(files)} files; at most {max_batch} per request.")
        images = np.stack([await read_picture(f) for f in files])[:, None]
        found = predictions(images)
        return {
            "predictions": [{"filename": f.filename} | p for f, p in zip(files, found, strict=True)]
        }

    @app.post("/predict/pixels")
    def predict_pixels(body: PixelsRequest) -> dict:
        try:
            array = np.asarray(body.inputs, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise HTTPException(
                422, f"inputs is not a rectangular array of numbers ({exc})."
            ) from exc
        if array.ndim == 3:
            array = array[:, None]
        if (
            array.ndim != 4
            or array.shape[1:] != (1, SIZE, SIZE)
            or not 1 <= len(array) <= max_batch
        ):
            raise HTTPException(
                422, f"inputs has shape {list(np.shape(body.inputs))}; expected [N, 1, 28, 28] or "
                f"[N, 28, 28] with 1 <= N <= {max_batch}.",
            )  # fmt: skip
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise HTTPException(422, "inputs must be raw pixel values in 0..255 (finite).")
        return {"predictions": predictions(array)}

    return app


def run(argv: list[str]) -> None:
    import uvicorn

    options = cli.parse("serve", argv, OPTIONS, "model_uri=best host=127.0.0.1 port=8000")
    try:
        port, max_mb, max_batch = (
            int(options["port"]),
            float(options["max_upload_mb"]),
            int(options["max_batch"]),
        )
    except ValueError as exc:
        raise UserError(
            f"serve: port=, max_upload_mb= and max_batch= take numbers ({exc})."
        ) from exc
    uri = options["tracking_uri"] or default_tracking_uri()
    model = inference.load(options["model_uri"], uri, options["experiment"])  # fails before binding
    app = create_app(model, int(max_mb * (1 << 20)), max_batch)
    print(f"serving {model.uri} on http://{options['host']}:{port}/")
    uvicorn.run(app, host=options["host"], port=port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
