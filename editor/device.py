"""Where the model runs, in what precision, and how a record names that.

Every record the loop writes says which device and which library versions produced it, so a
result can be traced to the software as well as to the bytes.

    >>> from seal.editor.device import pick_device, dtype_for, environment_record
    >>> device = pick_device("cpu")              # "auto" picks "cuda", "mps" or "cpu"
    >>> dtype_for(device)                        # torch.bfloat16 on a recent GPU, else float32
    torch.float32
    >>> environment_record(device)["device"]
    'cpu'
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

from seal.registry.errors import DeviceUnavailable

_KNOWN_KINDS = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(name: str = "auto", require_gpu: bool = False) -> str:
    """Resolve a device name to one torch can use, or say why it cannot.

    ``auto`` picks ``cuda``, then ``mps``, then ``cpu``. An explicit ``cuda`` / ``cuda:N`` or
    ``mps`` that is not present is an error rather than a silent fall back to the CPU, because a
    user who names a GPU expects the run (and its timings) to be on that GPU.

        >>> pick_device("cpu")
        'cpu'
        >>> pick_device("cuda", require_gpu=True)   # on a machine without CUDA  # doctest: +SKIP
        Traceback (most recent call last):
        seal.registry.errors.DeviceUnavailable: a CUDA GPU is required but torch.cuda.is_available() is False; ...

    Raises:
        DeviceUnavailable: (a ``ValueError`` and a ``UserError``) unknown name, a requested
            accelerator that is missing, or ``require_gpu`` without CUDA. The message says what to do.
    """
    requested = (name or "auto").strip().lower()
    kind = requested.split(":", 1)[0]
    if kind not in _KNOWN_KINDS:
        raise DeviceUnavailable(
            f"unknown device {name!r}; use one of auto, cpu, cuda, cuda:N or mps",
            device=name, require_gpu=require_gpu,
        )
    cuda = torch.cuda.is_available()
    if require_gpu and not cuda:
        raise DeviceUnavailable(
            "a CUDA GPU is required but torch.cuda.is_available() is False; run on a machine "
            "with an NVIDIA GPU and a CUDA build of torch, or drop --require-gpu to use "
            f"{'mps' if _mps_available() else 'the CPU'}",
            device=name, require_gpu=require_gpu,
        )
    if kind == "auto":
        if cuda:
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if kind == "cuda":
        if not cuda:
            raise DeviceUnavailable(
                f"device {name!r} was requested but torch.cuda.is_available() is False; "
                "install a CUDA build of torch on a GPU machine, or pass --device cpu",
                device=name, require_gpu=require_gpu,
            )
        if ":" in requested:
            index = requested.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DeviceUnavailable(
                    f"device {name!r} does not exist: this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s)",
                    device=name, require_gpu=require_gpu,
                )
        return requested
    if require_gpu:
        raise DeviceUnavailable(
            f"--require-gpu was given together with device {name!r}; pass --device cuda or "
            "--device auto",
            device=name, require_gpu=require_gpu,
        )
    if kind == "mps" and not _mps_available():
        raise DeviceUnavailable("device 'mps' was requested but is not available; pass --device cpu",
                                device=name, require_gpu=require_gpu)
    return kind


def dtype_for(device: str) -> torch.dtype:
    """The compute dtype for the base model on ``device``.

    bf16 on CUDA cards that support it (it halves memory and the range matches fp32, so LoRA
    training needs no loss scaling); float32 everywhere else, because CPU bf16 matmuls are
    slow on most CPUs and fp16 on CPU/MPS loses too much precision for small-model training.

        >>> dtype_for("cpu")
        torch.float32
    """
    if str(device).startswith("cuda") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
    return torch.float32


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment_record(device: str) -> dict[str, Any]:
    """What a training or evaluation record says about where it ran.

        >>> environment_record("cpu")  # doctest: +SKIP
        {'device': 'cpu', 'gpu': None, 'dtype': 'float32', 'torch': '2.x', 'cuda': None, ...}
    """
    gpu: str | None = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        gpu = torch.cuda.get_device_name(index if index is not None else 0)
    return {
        "device": str(device),
        "gpu": gpu,
        "dtype": str(dtype_for(device)).removeprefix("torch."),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "python": platform.python_version(),
    }
