"""Pytest fixtures that point the real ``huggingface_hub`` client at a ``LocalHub`` (tests/hubserver.py).

Use from a test module with ``from hubfixtures import local_hub, hf_api  # noqa: F401`` (or re-export
them from conftest.py). ``local_hub`` starts a fresh in-memory server per test and patches the client
so that *unchanged* code (``HfApi()``, the module-level ``huggingface_hub.create_repo`` & co,
``hf_hub_download``, ``snapshot_download``, transformers/peft loading) talks to it, with Xet disabled and
every cache/token path under ``tmp_path`` so nothing touches ``~/.cache``.

Why patching and not only ``HF_ENDPOINT``: ``huggingface_hub.constants`` reads the environment once at
import time, and the server's port is only known after the import. Everything in the client reads
``constants.ENDPOINT`` etc. at call time, except three import-time copies that ``use_local_hub`` also
patches: ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (``hf_hub_url``), ``constants.HF_URL_HOSTS`` and the
module-level ``huggingface_hub.hf_api.api`` instance behind ``huggingface_hub.create_repo`` etc.
An ``HfApi`` object created *before* the patch keeps its old endpoint: create it afterwards or pass
``endpoint=hub.endpoint``. Subprocesses get the same setup from the environment variables set here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from .hubserver import LocalHub
except ImportError:  # tests/ is not a package: imported by basename
    from hubserver import LocalHub

TOKEN = "hf_localhub_test_token"


def use_local_hub(endpoint: str, monkeypatch: pytest.MonkeyPatch, home: Path, token: str = TOKEN) -> dict[str, str]:
    """Point huggingface_hub (already imported or not) at ``endpoint``; caches and token under ``home``.

    Returns the environment variables it set (also in ``os.environ`` until the test ends): pass them to
    subprocesses whose environment was captured earlier, e.g. ``Seal(tmp_path, env=local_hub.client_env)``.
    """
    from urllib.parse import urlsplit

    import huggingface_hub.hf_api
    from huggingface_hub import constants

    home = Path(home)
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN": token,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING", "HF_HUB_ENABLE_HF_TRANSFER"):
        monkeypatch.delenv(key, raising=False)
    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname},
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    try:  # scan_cache_dir() default
        import huggingface_hub.utils._cache_manager as cache_manager

        monkeypatch.setattr(cache_manager, "HF_HUB_CACHE", str(home / "hub"))
    except (ImportError, AttributeError):
        pass
    os.makedirs(home / "hub", exist_ok=True)
    return env


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A fresh LocalHub; the real client is patched to use it (see module docstring)."""
    with LocalHub() as hub:
        hub.client_env = use_local_hub(hub.endpoint, monkeypatch, tmp_path / "hf_home")
        yield hub


@pytest.fixture
def hf_api(local_hub: LocalHub):
    """An ``HfApi`` bound explicitly to the local hub, with a (fake) token."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=local_hub.endpoint, token=TOKEN)
