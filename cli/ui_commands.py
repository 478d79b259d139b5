"""`seal ui`: serve the read-only lineage browser (seal.ui) with uvicorn. Parse, check, serve."""

from __future__ import annotations

import os
import socket
import sys
from typing import Optional

import typer

from .framework import command, doc, state

MIN_TOKEN = 16


@command(help=doc(
    "Browse the registry in a web browser: the lineage as a graph, each version with its trigger, self-edit, "
    "loss, scores, gates and parent diff, two versions compared, a branch's drift, and the audit report with "
    "downloads. Read-only: the database is opened read-only and no page writes. It listens on 127.0.0.1; "
    "any other --host needs --token (or SEAL_UI_TOKEN), which every request must present.",
    "seal ui", "seal ui --port 8800", "seal ui --host 0.0.0.0 --token \"$(openssl rand -hex 16)\"",
))
def ui(
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="The port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="The address to listen on (not loopback: needs --token)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="SEAL_UI_TOKEN", show_envvar=True,
                                        help="A secret every request must present (16 characters or more)."),
    mlflow_url: Optional[str] = typer.Option(None, "--mlflow-url", help="The MLflow UI's address, to link each version's run."),
) -> None:
    from seal.registry.errors import UserError
    from seal.registry.repo import Registry
    from seal.ui.app import is_loopback

    if token is not None and len(token) < MIN_TOKEN:
        raise UserError(f"--token is too short; give {MIN_TOKEN} characters or more (e.g. `openssl rand -hex 16`)")
    if not is_loopback(host) and token is None:
        raise UserError(f"--host {host} would let other machines read the registry; give --token TOKEN "
                        f"(or SEAL_UI_TOKEN), or keep the default 127.0.0.1")
    if mlflow_url is not None and not mlflow_url.startswith(("http://", "https://")):
        raise UserError("--mlflow-url must start with http:// or https://")
    mlflow_url = mlflow_url or _mlflow_ui(os.environ.get("MLFLOW_TRACKING_URI"))
    reg = Registry.open(state.repo_path, read_only=True)
    state.opened.append(reg)
    reg.head()  # a missing, damaged or foreign database refuses here, before the port is taken
    listener = _listen(host, port)
    from seal.ui import create_app

    app = create_app(reg, token=token, mlflow_url=mlflow_url)
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    sys.stderr.write(f"seal ui: {reg.root if reg.seal_dir else 'the registry'} at {address} (read-only; Ctrl-C stops)\n")
    sys.stderr.flush()
    _serve(app, listener)


def _mlflow_ui(tracking_uri: str | None) -> str | None:
    return tracking_uri if tracking_uri and tracking_uri.startswith(("http://", "https://")) else None


def _listen(host: str, port: int) -> socket.socket:
    """Bind before serving, so a taken port or a bad address is one line (exit 2), not a traceback."""
    from seal.registry.errors import UserError

    try:
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _serve(app, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
