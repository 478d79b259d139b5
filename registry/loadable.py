"""Folders that load anywhere: what ``base_model_name_or_path`` a checked-out adapter names.

A stored adapter config names its base portably (the Hub id, or the base's name), so the blob's
digest is the same on every machine. A checked-out folder instead names what loads *here*,
offline: the Hub id when the base is a Hub snapshot in the local cache, otherwise the folder of
safetensors weights seal scored against (`seal base --path` prints it). Then
``AutoPeftModelForCausalLM.from_pretrained(folder)`` works without seal.

>>> base_path({"source": "hub", "name": "org/m", "info": {}})
'org/m'
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


def base_path(base: dict) -> str:
    """What ``from_pretrained`` should be given to load this base offline on this machine."""
    if base.get("source") == "hub":
        return base["name"]
    weights = (base.get("info") or {}).get("weights_dir")
    if weights and Path(weights).is_dir():
        return str(Path(weights).resolve())
    location = base.get("location")
    if location and Path(location).is_dir():
        return str(Path(location).resolve())
    return base["name"]


def portable_config(reg, config: dict) -> dict:
    """The adapter config to write into a checked-out folder."""
    out = dict(config)
    try:
        out["base_model_name_or_path"] = base_path(reg.base())
    except UserError:  # a registry whose base row is unreadable still checks out its bytes
        pass
    return out
