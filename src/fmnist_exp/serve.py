"""`python -m fmnist_exp.serve [model_uri=best] [port=8000]` (or `make serve`; options: conf/serve.yaml):
the web app (web_app.py: a page to drop pictures on, and a JSON API) over one model, on one port.
"""

import socket

from omegaconf import DictConfig

from fmnist_exp import checks
from fmnist_exp.app import hydra_app
from fmnist_exp.errors import UserError


def run(cfg: DictConfig) -> int:
    checks.check_serve(cfg)
    import uvicorn  # the work's imports, once the options passed (app.py)

    from fmnist_exp import inference
    from fmnist_exp.web_app import create_app

    # fails before binding
    model = inference.load(cfg.model_uri, cfg.tracking_uri, cfg.experiment_name, cfg.dataset)
    app = create_app(model, int(cfg.max_upload_mb * (1 << 20)), cfg.max_batch)
    with listening_socket(cfg.host, cfg.port) as sock:  # bound before we say we serve
        print(f"serving {model.uri} on http://{cfg.host}:{cfg.port}/")
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound (as uvicorn binds it); a port in use or an address this machine
    does not have is a UserError naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(
            f"serve: cannot listen on {host}:{port} ({exc.strerror or exc}): another program may "
            f"be serving there. Stop it, or choose another port, e.g. port={port + 1}."
        ) from exc
    return sock


main = hydra_app("serve", run)

if __name__ == "__main__":
    raise SystemExit(main())
