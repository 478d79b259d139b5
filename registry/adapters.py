"""What a PEFT LoRA adapter folder is, checked without importing torch.

>>> adapter = read_adapter_folder(Path("my-adapter"))      # doctest: +SKIP
>>> adapter.config["r"]                                      # doctest: +SKIP
32
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Formats that unpickle on load, so can run code: never accepted.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class AdapterFolder:
    path: Path
    config: dict
    weights: Path
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked for sane offsets."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise UserError(f"{path} is not a safetensors file (too short); save it with safe_serialization=True")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > MAX_HEADER or 8 + n > size:
            raise UserError(f"{path} is not a valid safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path} is not a valid safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a valid safetensors file (header is not an object)")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise UserError(f"{path} is not a valid safetensors file (tensor {name!r} has no offsets)") from None
        if not (0 <= start <= end <= data_len):
            raise UserError(f"{path} is truncated or corrupt (tensor {name!r} lies past the end of the file)")
    return header


def read_adapter_folder(path: Path) -> AdapterFolder:
    """Check that ``path`` holds a PEFT LoRA adapter in safetensors, or raise a UserError saying why."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give the folder that holds adapter_config.json")
    if not path.is_dir():
        raise UserError(f"{path} is not a folder; give the folder that holds adapter_config.json")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(
            f"{path} holds pickle weights ({', '.join(pickles)}), which can run code when loaded; "
            f"re-save the adapter with save_pretrained(..., safe_serialization=True) and remove them"
        )
    cfg_path = path / CONFIG_FILE
    weights = path / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise UserError(f"{path} has no {CONFIG_FILE}; give a folder written by PEFT's save_pretrained")
    if not weights.is_file():
        raise UserError(f"{path} has no {WEIGHTS_FILE}; save the adapter with safe_serialization=True")
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno}); fix or re-save it") from None
    if not isinstance(config, dict):
        raise UserError(f"{cfg_path} is not a JSON object; re-save the adapter with PEFT")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise UserError(
            f"{path} is a {peft_type or 'non-PEFT'} adapter; seal records LoRA adapters only (peft_type LORA)"
        )
    header = safetensors_header(weights)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not any(".lora_A" in k or "lora_embedding_A" in k for k in tensors):
        raise UserError(f"{weights} holds no lora_A/lora_B tensors; it is not a LoRA adapter")
    return AdapterFolder(path=path, config=config, weights=weights, tensors=tensors)
