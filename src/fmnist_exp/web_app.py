"""The web app `python -m fmnist_exp.serve` starts: a page and a JSON API over one loaded model.

  GET  /               a page: choose or drop pictures -> the 28x28 the model sees + class probabilities
  POST /predict        multipart field `file` (PNG/JPEG, any size) -> {label, class_name, probabilities, image}
  POST /predict/batch  multipart field `files` (several pictures) -> {predictions: [...]}
  POST /predict/pixels JSON {"inputs": [N, 1, 28, 28] or [N, 28, 28], raw 0..255} -> {predictions: [...]}
  GET  /health         {status, model_uri}

Bad requests get a status and a message, never a dead server: unreadable image 400, a body over
its limit (max_upload_mb per picture, announced or sent chunked) or a picture over
pictures.MAX_PIXELS 413, wrong array shape or values 422, anything unexpected 500. Pictures are
decoded in worker threads, DECODES_AT_ONCE at a time, with their memory given back after each, so a
burst of large pictures neither holds up other requests nor keeps the burst's memory.
"""

import base64
import hashlib
import io
import re
import threading
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from fmnist_exp import inference
from fmnist_exp.data import pictures
from fmnist_exp.errors import DataError

SIZE = pictures.SIZE
PAGE = Path(__file__).with_name("serve_page.html")


def content_security_policy(page: str) -> str:
    """The page's policy: its own inline script and style (by their SHA-256) and nothing else, so
    no inline event handler, injected <script> or javascript: URL runs, whatever a class or file
    name holds; pictures only from the page's own data: URLs, requests only to this server."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
            for b in blocks
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class PixelsRequest(BaseModel):
    inputs: list  # [N, 1, 28, 28] or [N, 28, 28], 0..255 (MLflow's `inputs` format)


def _png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class BodyLimit:
    """ASGI middleware: a request body over `limit(path)` bytes gets 413. One that announces its
    length is refused before it is read; one sent chunked is read here, at most `limit` bytes of it,
    and handed on only when it ends within the limit, so no body is ever held beyond its bound."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > limit:
                return await self._refuse(send, f"{int(length):,}", limit)
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > limit:
                return await self._refuse(send, f"over {limit:,}", limit)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    @staticmethod
    async def _refuse(send, size: str, limit: int) -> None:
        body = JSONResponse(
            {"detail": f"request body of {size} bytes is over the limit of {limit:,} bytes."},
            status_code=413,
        )
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


# Pictures decoded at once, whatever the number of requests: each may hold tens of MB while it
# decodes, and two keep both of a small server's cores busy.
DECODES_AT_ONCE = 2
_decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)


def bounded_decode(data: bytes, name: str) -> np.ndarray:
    """pictures.decode, at most DECODES_AT_ONCE at a time, its memory given back afterwards."""
    with _decoding:
        try:
            return pictures.decode(data, name)
        finally:
            pictures.release_memory()


def create_app(model: inference.LoadedModel, max_upload_bytes: int = 5 << 20, max_batch: int = 256):
    app = FastAPI(title="fmnist-exp", description=__doc__)
    page = PAGE.read_text()
    page_headers = {"Content-Security-Policy": content_security_policy(page)}
    classes = model.class_names

    def predictions(images: np.ndarray) -> list[dict]:
        probs = model.probabilities(torch.from_numpy(images)).tolist()
        return [
            {
                "label": int(np.argmax(p)),
                "class_name": classes[int(np.argmax(p))],
                "probabilities": dict(zip(classes, (round(v, 6) for v in p), strict=True)),
            }
            for p in probs
        ]

    async def read_picture(upload: UploadFile) -> np.ndarray:
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(
                413, f"{upload.filename}: over the {max_upload_bytes:,}-byte limit."
            )
        try:  # off the event loop: other requests go on while a big picture decodes
            return await run_in_threadpool(bounded_decode, data, upload.filename or "upload")
        except pictures.PictureTooLarge as exc:
            raise HTTPException(413, str(exc)) from exc
        except DataError as exc:
            raise HTTPException(400, str(exc)) from exc

    multipart_headers = 64 * 1024  # room for the form's boundaries and part headers
    app.add_middleware(
        BodyLimit,
        limit=lambda path: (
            max_upload_bytes * (max_batch if path == "/predict/batch" else 1) + multipart_headers
        ),
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        """422 naming what is wrong, never the body itself (a picture sent as JSON's body would be
        echoed back, and a binary one could not even be encoded: a 500)."""
        problems = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors()
        )
        sent = request.headers.get("content-type", "no content type").split(";")[0]
        return JSONResponse({"detail": f"{problems} (sent as {sent})."}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return JSONResponse(
            {"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
        )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:  # async: answered on the event loop, never queued
        return HTMLResponse(page, headers=page_headers)  # behind decodes in the thread pool

    @app.get("/health")
    async def health() -> dict:
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
