"""What a PEFT LoRA adapter is, checked without importing torch.

An adapter is two files: ``adapter_config.json`` and ``adapter_model.safetensors``. Each check
below is a small function over them, and every refusal is a :class:`UserError` whose one line says
what is wrong and what to do:

- :func:`safetensors_header`: the file's layout (the one safetensors header reader of seal);
- :func:`parse_json` and :func:`check_config`: the config is strict JSON and plain LoRA;
- :func:`check_tensors` and :func:`check_finite`: every module has ``lora_A`` ``[r, in]`` and
  ``lora_B`` ``[out, r]``, with finite values;
- :func:`check_against_base`: every module exists in the base with the same shape, and
  ``target_modules`` selects exactly the modules that are there (see :func:`linear_shapes`).

:func:`read_adapter_folder` runs them all on a folder, :func:`check_adapter_bytes` on stored blobs.

>>> settings = check_config({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
...                          "target_modules": ["q_proj", "v_proj"]})
>>> settings.r, settings.targets("model.layers.0.self_attn.q_proj"), settings.targets("lm_head")
(8, True, False)
>>> adapter = read_adapter_folder("my-adapter", base_shapes=linear_shapes("my-base"))  # doctest: +SKIP
>>> adapter.modules["model.layers.0.self_attn.q_proj"]                                 # doctest: +SKIP
LoraModule(name='model.layers.0.self_attn.q_proj', kind='linear', r=8, in_features=576, out_features=576)

This module must not import torch, transformers or peft.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .errors import UserError

__all__ = [
    "ADAPTER_CONFIG_FILE", "WEIGHTS_FILE", "PICKLE_SUFFIXES", "DTYPE_BITS",
    "TensorInfo", "SafetensorsHeader", "LoraSettings", "LoraModule", "CheckedAdapter", "AdapterFolder",
    "safetensors_header", "tensor_array", "parse_json", "check_config", "check_tensors",
    "check_finite", "check_against_base", "linear_shapes", "check_adapter_bytes",
    "read_adapter_folder", "pattern_value",
]

ADAPTER_CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Formats that unpickle on load, so can run code: never accepted.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_HEADER = 100_000_000  # the cap the safetensors format itself sets
MAX_CONFIG_BYTES = 1 << 20
MAX_RANK = 4096
MAX_ALPHA = float(1 << 20)  # far above any real adapter; keeps alpha / r and its squares finite
MAX_SAFE_INT = 1 << 53  # beyond this a JSON integer is not exact in most readers
MAX_JSON_DEPTH = 32
MAX_PATTERN_CHARS = 1000
MAX_DIMS = 64  # torch's own limit

#: Bits per element of every safetensors dtype.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
# Dtypes numpy holds natively; BF16 is widened to float32 by hand.
_NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "C64": "<c8",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_FACTOR_DTYPES = ("F64", "F32", "F16", "BF16")
# Where an IEEE float's exponent bits sit, per dtype: (bytes per value, ((byte offset, mask), ...)),
# little-endian. A value is NaN or +-inf exactly when every one of those bits is set, so the check
# runs over whole tensors with bytes.translate and big-integer AND (C speed, and no numpy import:
# `seal import` starts in a fraction of numpy's import time).
_EXPONENT = {"F16": (2, ((1, 0x7C),)), "BF16": (2, ((1, 0x7F), (0, 0x80))),
             "F32": (4, ((3, 0x7F), (2, 0x80))), "F64": (8, ((7, 0x7F), (6, 0xF0)))}
_ALL_SET = {mask: bytes(1 if b & mask == mask else 0 for b in range(256)) for mask in (0x7C, 0x7F, 0x80, 0xF0)}

Weights = Union[str, os.PathLike, bytes, bytearray, memoryview]


# --------------------------------------------------------------------------------------------
# Strict JSON
# --------------------------------------------------------------------------------------------

def _refuse_constant(where: str):
    def hook(name: str):
        raise UserError(f"{where} holds {name}, which JSON does not allow; write a finite number instead")
    return hook


def _exact_int(where: str):
    def hook(text: str) -> int:
        # Checked on the digits first: int() of a huge literal is itself slow (and capped).
        if len(text.lstrip("-")) > 16 or abs(int(text)) > MAX_SAFE_INT:
            raise UserError(f"{where} holds the integer {text[:24]}, beyond 2**53; write a smaller value")
        return int(text)
    return hook


def _finite_float(where: str):
    def hook(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise UserError(f"{where} holds {text[:24]}, which overflows a float; write a finite number")
        return value
    return hook


def _unique_keys(where: str):
    def hook(pairs: list) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise UserError(f"{where} has the key {key[:80]!r} twice; keep one")
            out[key] = value
        return out
    return hook


def parse_json(raw: bytes, where: str) -> Any:
    """Strict JSON from UTF-8 bytes: no NaN/Infinity, no integer beyond 2**53, no repeated key."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 text (bad byte at {e.start}); save it as UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant(where), parse_int=_exact_int(where),
                           parse_float=_finite_float(where), object_pairs_hook=_unique_keys(where))
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}); fix or re-save it") from None
    except RecursionError:
        raise UserError(f"{where} is not valid JSON (nested too deeply); fix or re-save it") from None
    _check_json_value(value, where)
    return value


def _check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """Refuse what JSON cannot carry exactly, also in a dict built in code (from a manifest)."""
    if depth > MAX_JSON_DEPTH:
        raise UserError(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep; flatten it")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{where} holds a string that is not valid Unicode (a lone surrogate); fix it") from None
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise UserError(f"{where} holds the integer {value}, beyond 2**53; write a smaller value")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{where} holds {value}, which JSON does not allow; write a finite number instead")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UserError(f"{where} has a non-string key {key!r:.40}; use string keys, as JSON does")
            _check_json_value(key, where, depth + 1)
            _check_json_value(item, where, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_json_value(item, where, depth + 1)
    else:
        raise UserError(f"{where} holds a {type(value).__name__}, which is not a JSON value; keep to JSON types")


# --------------------------------------------------------------------------------------------
# The safetensors layout
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file; ``start``/``end`` are relative to the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # where the data region begins in the file: 8 + header length
    size: int  # the whole file, in bytes


class _Bytes:
    """Random access to a file or to bytes in memory, so a path and a blob are checked alike."""

    def __init__(self, source: Weights, where: str):
        self.where = where
        self.data = memoryview(source).cast("B") if isinstance(source, (bytes, bytearray, memoryview)) else None
        self.path = None if self.data is not None else Path(source)
        try:
            self.size = len(self.data) if self.data is not None else self.path.stat().st_size
        except OSError as e:
            raise UserError(f"{where} cannot be read ({e.strerror}); check the path") from None

    def read(self, offset: int, n: int) -> bytearray:
        """A fresh, writable copy, so arrays made from it are writable too."""
        if self.data is not None:
            out, got = bytearray(self.data[offset:offset + n]), min(n, max(len(self.data) - offset, 0))
        else:
            out = bytearray(n)
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(offset)
                    got = fh.readinto(out)
            except OSError as e:
                raise UserError(f"{self.where} cannot be read ({e.strerror}); check the file") from None
        if got != n:
            raise UserError(f"{self.where} is truncated (it changed while being read); copy it again")
        return out


def _bad(where: str, what: str) -> UserError:
    return UserError(f"{where} is not a valid safetensors file ({what}); re-save it with safe_serialization=True")


def safetensors_header(source: Weights, *, where: str | None = None) -> SafetensorsHeader:
    """Read and check the layout of a safetensors file (a path) or blob (bytes), without torch.

    Checks what the safetensors library does before it maps a byte: a sane header length, a
    JSON object, a known dtype and a shape of non-negative ints per tensor, integer offsets whose
    span is exactly the tensor's size, and tensors that tile the data region with no gap, overlap
    or stray byte; ``__metadata__`` is a map of strings.

        >>> header = safetensors_header("adapter/adapter_model.safetensors")   # doctest: +SKIP
        >>> header.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape  # doctest: +SKIP
        (8, 576)
    """
    where = where or (str(source) if isinstance(source, (str, os.PathLike)) else "the safetensors blob")
    return _parse_header(_Bytes(source, where))


def _parse_header(buf: _Bytes) -> SafetensorsHeader:
    where = buf.where
    if buf.size < 8:
        raise UserError(f"{where} is not a safetensors file (shorter than 8 bytes); save it with safe_serialization=True")
    n = int.from_bytes(buf.read(0, 8), "little")
    if n < 2 or n > MAX_HEADER:
        raise _bad(where, f"header length {n}")
    if 8 + n > buf.size:
        raise UserError(f"{where} is truncated (its header runs past the end of the file); copy it again")
    header = parse_json(buf.read(8, n), f"the header of {where}")
    if not isinstance(header, dict):
        raise _bad(where, "the header is not a JSON object")
    metadata = _metadata(header.pop("__metadata__", {}), where)
    data_len = buf.size - 8 - n
    tensors = {name: _tensor_info(name, info, data_len, where) for name, info in header.items()}
    _check_tiling(tensors, data_len, where)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_start=8 + n, size=buf.size)


def _metadata(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad(where, "__metadata__ must map strings to strings")
    return value


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _tensor_info(name: str, info: Any, data_len: int, where: str) -> TensorInfo:
    if not isinstance(info, dict):
        raise _bad(where, f"tensor {name!r:.120} is not described by an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _bad(where, f"tensor {name!r:.120} has unknown dtype {dtype!r:.40}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _bad(where, f"tensor {name!r:.120} has shape {shape!r:.60}, not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise _bad(where, f"tensor {name!r:.120} has data_offsets {offsets!r:.60}, not two non-negative integers")
    if len(shape) > MAX_DIMS:
        raise _bad(where, f"tensor {name!r:.120} has {len(shape)} dimensions")
    start, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise _bad(where, f"tensor {name!r:.120} of {dtype} {shape!r:.60} is not a whole number of bytes")
    if end - start != bits // 8:
        raise _bad(where, f"tensor {name!r:.120} spans {end - start} bytes but {dtype} {shape!r:.60} needs {str(bits // 8):.24}")
    if end > data_len:
        raise UserError(f"{where} is truncated or corrupt (tensor {name!r:.120} lies past the end of the file); copy it again")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end)


def _check_tiling(tensors: Mapping[str, TensorInfo], data_len: int, where: str) -> None:
    expected = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != expected:
            what = "overlaps another tensor" if info.start < expected else "leaves a gap before it"
            raise _bad(where, f"tensor {info.name!r:.120} {what}")
        expected = info.end
    if expected != data_len:
        raise _bad(where, f"{data_len - expected} stray bytes after the last tensor")


def tensor_array(buf: _Bytes | Weights, header: SafetensorsHeader, name: str):
    """One tensor as a numpy array; bf16 is widened exactly to float32 (its top 16 bits)."""
    import numpy as np

    if not isinstance(buf, _Bytes):
        buf = _Bytes(buf, str(buf) if isinstance(buf, (str, os.PathLike)) else "the safetensors blob")
    info = header.tensors[name]
    raw = buf.read(header.data_start + info.start, info.end - info.start)
    if info.dtype == "BF16":
        halves = np.frombuffer(raw, dtype="<u2")
        return (halves.astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
    if info.dtype not in _NUMPY_DTYPES:
        raise UserError(
            f"{buf.where}: tensor {name!r:.120} has dtype {info.dtype}, which seal cannot read without "
            "torch; save the adapter in float32, float16 or bfloat16."
        )
    return np.frombuffer(raw, dtype=_NUMPY_DTYPES[info.dtype]).reshape(info.shape)


# --------------------------------------------------------------------------------------------
# adapter_config.json
# --------------------------------------------------------------------------------------------

# Python's re has no timeout, and a quantified group that itself ends in a quantifier is the
# classic catastrophic-backtracking shape; no real target or rank pattern needs one.
_NESTED_QUANTIFIER = re.compile(r"[*+?}]\)+[*+{]")


def _pattern(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_PATTERN_CHARS:
        raise UserError(f"{where}: {field} holds {value!r:.60}; each entry must be a non-empty module name or pattern")
    if _NESTED_QUANTIFIER.search(value):
        raise UserError(f"{where}: {field} pattern {value!r:.60} nests quantifiers, which can hang matching; simplify it")
    try:
        re.compile(value)
    except re.error as e:
        raise UserError(f"{where}: {field} pattern {value!r:.60} is not a valid regular expression ({e}); fix it") from None
    return value


def _names(value: Any, where: str, field: str) -> str | tuple[str, ...]:
    """PEFT's ``str | list[str]`` fields: a str is one regular expression, a list holds names."""
    if isinstance(value, str):
        return _pattern(value, where, field)
    if isinstance(value, list) and value:
        return tuple(_pattern(v, where, field) for v in value)
    raise UserError(f"{where}: {field} is {value!r:.60}; give a module name pattern or a list of names, e.g. [\"q_proj\", \"v_proj\"]")


def _rank(value: Any, where: str, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RANK:
        raise UserError(f"{where}: {field} is {value!r:.40}; the rank must be a whole number from 1 to {MAX_RANK}")
    return value


def _alpha(value: Any, where: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_ALPHA:
        raise UserError(f"{where}: {field} is {value!r:.40}; it must be a finite number above 0 (at most {int(MAX_ALPHA)})")
    return float(value)


def _patterns(value: Any, where: str, field: str, check) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: {field} is {value!r:.60}; it must map module patterns to values, e.g. {{\"q_proj\": 16}}")
    return {_pattern(k, where, field): check(v, where, f"{field}[{k!r:.40}]") for k, v in value.items()}


def _layers(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None or value == []:
        return None
    if _is_count(value):
        return (value,)
    if isinstance(value, list) and all(_is_count(v) for v in value):
        return tuple(value)
    raise UserError(f"{where}: layers_to_transform is {value!r:.60}; give a layer index or a list of them")


#: Settings that make an adapter something other than ``ΔW = s·B·A`` on an unchanged base, so
#: seal could neither score nor reproduce it: refused when set.
_EXOTIC = {
    "use_dora": "DoRA rescales weights by a learned magnitude",
    "lora_bias": "it trains bias terms",
    "use_qalora": "QALoRA pools inputs",
    "modules_to_save": "it saves full copies of modules",
    "trainable_token_indices": "it trains token embeddings",
    "target_parameters": "it adapts raw parameters",
    "layer_replication": "it changes the base's layers",
    "alora_invocation_tokens": "activated LoRA switches on mid-sequence",
    "megatron_config": "it targets Megatron layers",
    "lora_ga_config": "LoRA-GA changes the base weights",
    "velora_config": "VeLoRA changes the update",
    "monteclora_config": "MonteCLoRA samples its update",
    "arrow_config": "Arrow routes between adapters",
    "kasa_config": "KaSA changes the update",
    "use_bdlora": "BD-LoRA changes the update",
}
# Initialisations that rewrite the base weights, so the adapter only works on a changed base.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass(frozen=True)
class LoraSettings:
    """The parts of ``adapter_config.json`` that decide which modules are adapted, and how."""

    r: int
    lora_alpha: float
    target_modules: str | tuple[str, ...]
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    exclude_modules: str | tuple[str, ...] | None = None
    layers_to_transform: tuple[int, ...] | None = None
    layers_pattern: tuple[str, ...] = ()

    def rank_of(self, module: str) -> int:
        return pattern_value(self.rank_pattern, module, self.r)

    def targets(self, module: str) -> bool:
        """Whether PEFT would put a LoRA layer on ``module`` (``check_target_module_exists``)."""
        if self._excluded(module):
            return False
        t = self.target_modules
        if t == "all-linear":
            return module.rsplit(".", 1)[-1] != "lm_head"  # PEFT leaves the output layer out
        if isinstance(t, str):
            return re.fullmatch(t, module) is not None
        if not (module in t or any(module.endswith("." + k) for k in t)):
            return False
        return self._in_layers(module)

    def _excluded(self, module: str) -> bool:
        ex = self.exclude_modules
        if not ex:
            return False
        if isinstance(ex, str):
            return re.fullmatch(ex, module) is not None
        return module in ex or any(module.endswith("." + k) for k in ex)

    def _in_layers(self, module: str) -> bool:
        if self.layers_to_transform is None:
            return True
        # Lazy .*? picks the first numbered segment (the layer), not an expert's index, as PEFT does.
        if not self.layers_pattern:
            m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        else:
            m = next(filter(None, (re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module)
                                   for p in self.layers_pattern)), None)
        return m is not None and int(m.group("idx")) in self.layers_to_transform


def pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """A module's entry in PEFT's ``rank_pattern``/``alpha_pattern``, as ``get_pattern_key`` finds it.

    The first key that matches the end of the module name, on a dot boundary, as a regular
    expression, wins.

        >>> pattern_value({"q_proj": 16}, "model.layers.0.self_attn.q_proj", 8)
        16
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _check_flags(config: Mapping[str, Any], where: str) -> None:
    for field, why in _EXOTIC.items():
        if config.get(field):
            raise UserError(
                f"{where}: {field} is set ({config[field]!r:.40}) and {why}, so it is not plain LoRA; "
                f"seal records plain LoRA adapters only, train or save it without {field}"
            )
    if config.get("bias", "none") != "none":
        raise UserError(f"{where}: bias is {config['bias']!r:.40}, so it trains bias terms; "
                        "seal records plain LoRA adapters only, train it with bias=\"none\"")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise UserError(f"{where}: init_lora_weights is {init!r:.40}, which changes the base weights; "
                        "convert it to plain LoRA (save_pretrained(path_initial_model_for_weight_conversion=...))")
    for field in ("use_rslora", "fan_in_fan_out"):
        if not isinstance(config.get(field, False), bool):
            raise UserError(f"{where}: {field} is {config[field]!r:.40}; it must be true or false")
    dropout = config.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise UserError(f"{where}: lora_dropout is {dropout!r:.40}; it must be a number from 0 to 1")
    for field in ("base_model_name_or_path", "revision"):
        value = config.get(field)
        if value is not None and (not isinstance(value, str) or "\0" in value or len(value) > 4096):
            raise UserError(f"{where}: {field} is {value!r:.60}; it must be a model name or path")


def check_config(config: Any, where: str = ADAPTER_CONFIG_FILE) -> LoraSettings:
    """Check an adapter config (already parsed) is plain PEFT LoRA that seal can score and load.

        >>> try:
        ...     check_config({"peft_type": "LORA", "r": 0, "lora_alpha": 8, "target_modules": "q"})
        ... except UserError as e:
        ...     print(e)
        adapter_config.json: r is 0; the rank must be a whole number from 1 to 4096
    """
    if not isinstance(config, Mapping):
        raise UserError(f"{where} is not a JSON object; re-save the adapter with PEFT")
    _check_json_value(config, where)
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        kind = peft_type if isinstance(peft_type, str) and peft_type else "non-PEFT"
        raise UserError(f"{where} is a {kind[:40]} adapter; seal records LoRA adapters only (peft_type LORA)")
    _check_flags(config, where)
    exclude = config.get("exclude_modules")
    patterns = config.get("layers_pattern")
    return LoraSettings(
        r=_rank(config.get("r"), where, "r"),
        lora_alpha=_alpha(config.get("lora_alpha"), where, "lora_alpha"),
        target_modules=_names(config.get("target_modules"), where, "target_modules"),
        rank_pattern=_patterns(config.get("rank_pattern"), where, "rank_pattern", _rank),
        alpha_pattern=_patterns(config.get("alpha_pattern"), where, "alpha_pattern", _alpha),
        use_rslora=config.get("use_rslora", False),
        fan_in_fan_out=config.get("fan_in_fan_out", False),
        exclude_modules=None if exclude in (None, [], "") else _names(exclude, where, "exclude_modules"),
        layers_to_transform=_layers(config.get("layers_to_transform"), where),
        layers_pattern=() if patterns in (None, [], "") else _as_tuple(_names(patterns, where, "layers_pattern")),
    )


def _as_tuple(names: str | tuple[str, ...]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else names


# --------------------------------------------------------------------------------------------
# The tensors
# --------------------------------------------------------------------------------------------

# The names PEFT's save_pretrained writes: the adapter name is stripped, embeddings have no .weight.
_LORA_TENSOR = re.compile(
    r"base_model\.model\.(?P<module>[^.]+(?:\.[^.]+)*)\.(?:(?P<linear>lora_[AB])\.weight|(?P<embedding>lora_embedding_[AB]))"
)


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: ``ΔW = s·B·A`` with A ``[r, in_features]`` and B ``[out_features, r]``."""

    name: str  # the module's path inside the base model, e.g. model.layers.0.self_attn.q_proj
    kind: str  # "linear" or "embedding"
    r: int
    in_features: int
    out_features: int


def _halves(header: SafetensorsHeader, where: str) -> dict[tuple[str, str], dict[str, TensorInfo]]:
    halves: dict[tuple[str, str], dict[str, TensorInfo]] = {}
    for name, info in header.tensors.items():
        m = _LORA_TENSOR.fullmatch(name)
        if m is None and name.endswith(".base_layer.weight"):
            raise UserError(
                f"{where}: tensor {name!r:.120} is a full copy of a base weight, which would replace the base's; "
                "save the adapter with save_pretrained(..., save_embedding_layers=False)"
            )
        if m is None:
            raise UserError(
                f"{where}: tensor {name!r:.120} is not a LoRA factor (PEFT writes base_model.model.<module>.lora_A.weight "
                "and .lora_B.weight); seal records plain LoRA only, save the adapter without extra modules"
            )
        part = m.group("linear") or m.group("embedding")
        kind = "linear" if m.group("linear") else "embedding"
        halves.setdefault((m.group("module"), kind), {})[part[-1]] = info
    modules = [module for module, _ in halves]
    if len(set(modules)) != len(modules):
        raise UserError(f"{where}: a module has both lora_A and lora_embedding_A tensors; re-save the adapter with PEFT")
    return halves


def _module(name: str, kind: str, pair: Mapping[str, TensorInfo], rank: int, where: str) -> LoraModule:
    if set(pair) != {"A", "B"}:
        missing = "lora_B" if "A" in pair else "lora_A"
        raise UserError(f"{where}: module {name!r:.120} has no {missing} tensor; the adapter file is incomplete, save it again")
    A, B = pair["A"], pair["B"]
    for t in (A, B):
        if t.dtype not in _FACTOR_DTYPES:
            raise UserError(f"{where}: tensor {t.name!r:.120} has dtype {t.dtype}; save LoRA factors in float32, float16 or bfloat16")
        if len(t.shape) != 2 or 0 in t.shape:
            raise UserError(f"{where}: tensor {t.name!r:.120} has shape {list(t.shape)}; LoRA factors are non-empty 2-D matrices")
    if A.shape[0] != rank or B.shape[1] != rank:
        raise UserError(
            f"{where}: module {name!r:.120} has lora_A {list(A.shape)} and lora_B {list(B.shape)}, but the config's rank "
            f"for it is {rank} (A is [r, in], B is [out, r]); the config and weights do not belong together, save both with PEFT again"
        )
    return LoraModule(name=name, kind=kind, r=rank, in_features=A.shape[1], out_features=B.shape[0])


def check_tensors(header: SafetensorsHeader, settings: LoraSettings, where: str) -> dict[str, LoraModule]:
    """Pair each module's ``lora_A`` and ``lora_B`` and check their shapes against the config."""
    halves = _halves(header, where)
    if not halves:
        raise UserError(f"{where} holds no lora_A/lora_B tensors; it is not a LoRA adapter")
    return {name: _module(name, kind, pair, settings.rank_of(name), where)
            for (name, kind), pair in sorted(halves.items())}


def check_finite(buf: _Bytes | Weights, header: SafetensorsHeader) -> None:
    """Refuse a file whose floating-point tensors hold NaN or ±inf."""
    if not isinstance(buf, _Bytes):
        buf = _Bytes(buf, str(buf) if isinstance(buf, (str, os.PathLike)) else "the safetensors blob")
    for name, info in header.tensors.items():
        if info.dtype in _FACTOR_DTYPES and non_finite(_tensor_bytes(buf, header, name), info.dtype):
            raise UserError(
                f"{buf.where}: tensor {name!r:.120} holds NaN or infinite values; the training diverged, "
                "train the adapter again (e.g. with a lower learning rate)"
            )


def _tensor_bytes(buf: _Bytes, header: SafetensorsHeader, name: str) -> bytes:
    info = header.tensors[name]
    return bytes(buf.read(header.data_start + info.start, info.end - info.start))


def non_finite(raw: bytes, dtype: str) -> bool:
    """Whether little-endian floats of ``dtype`` in ``raw`` hold a NaN or an infinity.

    >>> import struct
    >>> non_finite(struct.pack("<3f", 1.0, -2.5, 3.0), "F32"), non_finite(struct.pack("<2f", 1.0, float("nan")), "F32")
    (False, True)
    """
    width, parts = _EXPONENT[dtype]
    hits = -1
    for offset, mask in parts:
        hits &= int.from_bytes(raw[offset::width].translate(_ALL_SET[mask]), "little")
        if not hits:
            return False
    return hits > 0


# --------------------------------------------------------------------------------------------
# Against the base model
# --------------------------------------------------------------------------------------------

def _base_map(base_shapes: Any) -> dict[str, tuple[int, int]]:
    """The base's shapes as stored (JSON lists or tuples), refused if anything is off."""
    items = base_shapes.items() if isinstance(base_shapes, Mapping) else ()
    out = {k: tuple(v) for k, v in items
           if isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_count(d) for d in v)}
    if not out or len(out) != len(base_shapes):
        raise UserError("the base model's linear shapes are missing or malformed; record them again with linear_shapes(base folder)")
    return out  # type: ignore[return-value]


def check_against_base(modules: Mapping[str, LoraModule], settings: LoraSettings, base_shapes: Mapping[str, Any],
                       where: str) -> None:
    """Check each module exists in the base with the same shape, and that ``target_modules`` selects them all.

    ``base_shapes`` maps module paths to their weight's shape, ``{"model.layers.0.self_attn.q_proj":
    (576, 576)}``, as :func:`linear_shapes` builds it: ``(out, in)`` for a linear layer,
    ``(num_embeddings, dim)`` for an embedding, ``(in, out)`` for a GPT-2 ``Conv1D``.
    """
    base = _base_map(base_shapes)
    for m in modules.values():
        if m.name not in base:
            raise UserError(f"{where}: module {m.name!r:.120} is not in the base model; the adapter was trained on "
                            "another base, use it with a registry on that base")
        rows, cols = base[m.name]
        transposed = m.kind == "embedding" or settings.fan_in_fan_out
        out_f, in_f = (cols, rows) if transposed else (rows, cols)
        if (m.out_features, m.in_features) != (out_f, in_f):
            raise UserError(
                f"{where}: module {m.name!r:.120} maps {m.in_features} -> {m.out_features} features but the base's "
                f"maps {in_f} -> {out_f}; the adapter was trained on another base, use it with a registry on that base"
            )
        if not settings.targets(m.name):
            raise UserError(f"{where}: module {m.name!r:.120} is adapted but target_modules does not select it; "
                            "the config and weights do not belong together, save both with PEFT again")
    if settings.target_modules != "all-linear":
        missing = sorted(n for n in base if n not in modules and settings.targets(n))
        if missing:
            raise UserError(
                f"{where}: target_modules selects {len(missing)} base module(s) with no LoRA tensors, e.g. "
                f"{missing[0]!r:.120}; the adapter file is incomplete, save it again"
            )


def linear_shapes(weights_dir: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``{module path: weight shape}`` of every 2-D ``.weight`` in a model folder's ``*.safetensors``.

    Read from the headers only, so it costs milliseconds and no torch; store it with the base
    so adapters can be checked against it on any machine.

        >>> linear_shapes("SmolLM2-135M")["model.layers.0.self_attn.q_proj"]   # doctest: +SKIP
        (576, 576)
    """
    folder = Path(weights_dir)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        raise UserError(f"{folder} has no *.safetensors weights; give the base model's folder (config.json and *.safetensors)")
    shapes: dict[str, tuple[int, int]] = {}
    for f in files:
        for name, info in safetensors_header(f).tensors.items():
            if name.endswith(".weight") and len(info.shape) == 2:
                shapes[name[: -len(".weight")]] = (info.shape[0], info.shape[1])
    # A tied output layer is saved once, as the input embedding, yet PEFT can still target lm_head.
    embeddings = [n for n in shapes if n.rsplit(".", 1)[-1] in ("embed_tokens", "wte")]
    if "lm_head" not in shapes and len(embeddings) == 1:
        shapes["lm_head"] = shapes[embeddings[0]]
    return dict(sorted(shapes.items()))


# --------------------------------------------------------------------------------------------
# Whole adapters
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckedAdapter:
    config: dict
    settings: LoraSettings
    header: SafetensorsHeader
    modules: dict[str, LoraModule]


def check_adapter_bytes(config: Any, weights: Weights, base_shapes: Mapping[str, Any] | None = None, *,
                        config_where: str = ADAPTER_CONFIG_FILE, weights_where: str | None = None) -> CheckedAdapter:
    """Run every check on an adapter: a parsed config and its safetensors (a path or the bytes).

    ``seal verify`` calls it on stored blobs; pass ``base_shapes`` (see :func:`linear_shapes`) to
    check the adapter fits its base too.

        >>> check_adapter_bytes(manifest["adapter"]["config"], store.path_of(digest),   # doctest: +SKIP
        ...                     base_shapes=base["linear_shapes"], weights_where="the adapter of 3f2a9c1b")
    """
    settings = check_config(config, config_where)
    weights_where = weights_where or (str(weights) if isinstance(weights, (str, os.PathLike)) else WEIGHTS_FILE)
    buf = _Bytes(weights, weights_where)
    header = _parse_header(buf)
    modules = check_tensors(header, settings, weights_where)
    if base_shapes is not None:
        check_against_base(modules, settings, base_shapes, weights_where)
    check_finite(buf, header)
    return CheckedAdapter(config=dict(config), settings=settings, header=header, modules=modules)


@dataclass(frozen=True)
class AdapterFolder:
    path: Path
    weights: Path
    adapter: CheckedAdapter

    @property
    def config(self) -> dict:
        return self.adapter.config

    @property
    def modules(self) -> dict[str, LoraModule]:
        return self.adapter.modules

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self.adapter.header.tensors


def _read_config(cfg_path: Path) -> Any:
    try:
        with open(cfg_path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # not stat(): some files report size 0 and never end
    except OSError as e:
        raise UserError(f"{cfg_path} cannot be read ({e.strerror}); check its permissions") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UserError(f"{cfg_path} is over {MAX_CONFIG_BYTES} bytes, too large for an adapter config; re-save the adapter with PEFT")
    return parse_json(raw, str(cfg_path))


def read_adapter_folder(path: str | os.PathLike, base_shapes: Mapping[str, Any] | None = None) -> AdapterFolder:
    """Check that ``path`` holds a PEFT LoRA adapter in safetensors, or raise a UserError saying why.

        >>> read_adapter_folder("runs/adapter").modules.keys()                  # doctest: +SKIP
        dict_keys(['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', ...])
    """
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
    cfg_path = path / ADAPTER_CONFIG_FILE
    weights = path / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise UserError(f"{path} has no {ADAPTER_CONFIG_FILE}; give a folder written by PEFT's save_pretrained")
    if not weights.is_file():
        raise UserError(f"{path} has no {WEIGHTS_FILE}; save the adapter with safe_serialization=True")
    adapter = check_adapter_bytes(_read_config(cfg_path), weights, base_shapes, config_where=str(cfg_path))
    return AdapterFolder(path=path, weights=weights, adapter=adapter)
