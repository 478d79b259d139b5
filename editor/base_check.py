"""Is a base model usable? Checked at `seal init` and again before `seal edit` loads the weights.

Each check reads headers and builds the model on PyTorch's ``meta`` device (shapes, no
memory), so a bad base is refused in about a second with one line that says what is wrong,
instead of a traceback from deep inside transformers after a long load:

- a GGUF file: the magic bytes, a header that parses to the end, an architecture transformers
  can de-quantize;
- a model folder: a ``config.json`` transformers reads as a causal language model, safetensors
  headers that hold (offsets inside the file, the shapes the config implies), an architecture
  PEFT can put LoRA on (``all-linear``, seal's default), and a tokenizer that loads and fits the
  model's vocabulary.

    >>> check_model_folder(Path("SmolLM2-135M"))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from seal.registry.errors import UserError

FIX = "give a .gguf file, a model folder (config.json, *.safetensors and a tokenizer) or a Hub id as --base"


class BaseUnusable(UserError):
    """The base names files that exist but that seal could not train LoRA adapters on."""


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:160] + "…") if len(text) > 160 else (text or type(exc).__name__)


def check_gguf(path: Path) -> None:
    """The file is a complete GGUF of an architecture transformers can de-quantize."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise BaseUnusable(f"{path} is not a GGUF file (it lacks the GGUF magic bytes); {FIX}")
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    except Exception as e:  # gguf raises struct, value and index errors on a cut or garbled file
        raise BaseUnusable(f"{path} is a damaged or truncated GGUF file ({_reason(e)}); download it again") from None
    if arch is None:
        raise BaseUnusable(f"{path} names no general.architecture in its GGUF header; {FIX}")
    if arch not in GGUF_CONFIG_MAPPING:
        known = ", ".join(sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}))
        raise BaseUnusable(f"{path} holds a {arch!r} model, which transformers cannot de-quantize from GGUF "
                           f"(it can: {known}); convert it to a safetensors folder and give that as --base")


def check_model_folder(folder: Path) -> None:
    """Refuse a folder whose config, weights, architecture or tokenizer would fail at load or train time."""
    from seal.registry.adapters import safetensors_header

    config = _config(folder)
    headers = {f.name: safetensors_header(f) for f in sorted(folder.glob("*.safetensors"))}
    model = _meta_model(config, folder)
    _check_shapes(model, headers, folder)
    _check_peft(model, folder)
    _check_tokenizer(folder, config)


def _config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise BaseUnusable(f"transformers cannot read {folder / 'config.json'} ({_reason(e)}); {FIX}") from None


def _meta_model(config: Any, folder: Path) -> Any:
    """The model as transformers would build it, on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise BaseUnusable(f"{folder} is not a causal language model transformers can build "
                           f"({_reason(e)}); {FIX}") from None


def _check_shapes(model: Any, headers: dict, folder: Path) -> None:
    """Every stored tensor the model has must have the shape the config implies; some must match."""
    wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    prefix = getattr(model, "base_model_prefix", "") + "."
    matched = 0
    for file, header in headers.items():
        for name, info in header.tensors.items():
            key = name if name in wanted else prefix + name if prefix + name in wanted else None
            if key is None:
                continue
            matched += 1
            if tuple(info.shape) != wanted[key]:
                raise BaseUnusable(f"{folder / file} says {name} has shape {list(info.shape)}, but config.json "
                                   f"implies {list(wanted[key])}; the weights belong to another model")
    if not matched:
        raise BaseUnusable(f"none of the tensors in {folder}'s *.safetensors belongs to the "
                           f"{type(model).__name__} that its config.json describes; {FIX}")


def _check_peft(model: Any, folder: Path) -> None:
    from peft import LoraConfig, get_peft_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules="all-linear"))
    except Exception as e:
        raise BaseUnusable(f"PEFT cannot put LoRA on {type(model).__name__} from {folder} ({_reason(e)}); "
                           "give a base with linear layers PEFT supports") from None


def _check_tokenizer(folder: Path, config: Any) -> None:
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            ids = tokenizer("A short test sentence.")["input_ids"]
    except Exception as e:
        raise BaseUnusable(f"the tokenizer in {folder} cannot be loaded ({_reason(e)}); put the model's "
                           "tokenizer files (tokenizer.json or tokenizer.model, tokenizer_config.json) beside "
                           "config.json") from None
    vocab = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "vocab_size", None)
    if not ids:
        raise BaseUnusable(f"the tokenizer in {folder} turns text into no tokens; give the model's own tokenizer")
    if vocab and len(tokenizer) > vocab:
        raise BaseUnusable(f"the tokenizer in {folder} has {len(tokenizer)} tokens but the model's embeddings "
                           f"hold {vocab}; give the tokenizer that belongs to these weights")
