"""Checking what `seal edit`, `merge` and `consolidate` were given, before any model loads.

Everything here is torch-free: a bad option costs milliseconds and writes nothing. Target modules
are checked against the base's linear layers as recorded at `seal init` (no weights are read).

>>> check_device_name("cuda:1")
'cuda:1'
>>> check_number("--lr", float("nan"), low=0, low_open=True)
Traceback (most recent call last):
seal.registry.errors.UserError: --lr must be a finite number, not nan
"""

from __future__ import annotations

import math
import re

from seal.registry.errors import UserError
from seal.registry.store.objects import UNSAFE_CHARS

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
STYLES = ("implications", "rewrite", "self-qa")
INSTALL = "pip install 'seal-registry[cluster]'"


def check_device_name(name: str) -> str:
    if not isinstance(name, str) or not _DEVICE.match(name.strip().lower()):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return name.strip().lower()


def on_workers(req) -> bool:
    """Whether an edit fans out over Ray workers (``--workers`` or ``--ray``, :mod:`seal.editor.cluster`)."""
    return req.workers is not None or req.ray is not None


def check_device(req) -> str:
    """The device ``req`` (an EditRequest) runs on, or :class:`DeviceUnavailable` (imports torch)."""
    from .device import pick_device

    return pick_device(req.device, require_gpu=req.require_gpu)


def check_number(option: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False):
    """A finite number within [low, high] (open at ``low`` or ``high`` with ``low_open`` or
    ``high_open``), else a UserError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, not {value}")
    if integer and int(value) != value:
        raise UserError(f"{option} must be a whole number, not {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else (f"above {low:g}" if low_open else f"at least {low:g}")
        hi = "" if high is None else (f"below {high:g}" if high_open else f"at most {high:g}")
        raise UserError(f"{option} must be {' and '.join(x for x in (lo, hi) if x)}, not {value:g}")
    return value


def check_targets(targets, base_row: dict | None) -> None:
    """Each named target module must exist among the base's linear layers ('all-linear' always does)."""
    if targets == "all-linear":
        return
    names = [targets] if isinstance(targets, str) else list(targets)
    if not names or any(not isinstance(t, str) or not t.strip() for t in names):
        raise UserError("--targets needs module names (e.g. q_proj,v_proj) or all-linear")
    shapes = ((base_row or {}).get("info") or {}).get("shapes") or {}
    if not shapes:
        return  # a base recorded before seal kept its shapes: PEFT checks when it attaches the adapter
    leaves = {name.rsplit(".", 1)[-1] for name in shapes}
    unknown = [t for t in names if t not in leaves and t not in shapes]
    if unknown:
        known = ", ".join(sorted(leaves - {"lm_head"}))
        raise UserError(f"--targets {', '.join(unknown)}: no such linear layer in the base; known: {known}")


def check_text(value: str, what: str, limit: int) -> str:
    """Text that goes into a manifest (a title, a message): refused before any work if the
    manifest schema would refuse it after training (control or bidi-override characters)."""
    if len(value) > limit:
        raise UserError(f"{what} is {len(value)} characters long; keep it under {limit}")
    if UNSAFE_CHARS.search(value):
        raise UserError(f"{what} holds control or bidirectional-override characters; remove them")
    return value


def check_request(req, base_row: dict | None) -> None:
    """Every option of an EditRequest, before any file is read or any model loads (a UserError
    names the option)."""
    sources = [x for x in (req.passage, req.examples, req.passages) if x is not None]
    if len(sources) != 1:
        raise UserError("give exactly one of --passage FILE, --examples FILE or --passages FILE.jsonl")
    if req.passages is not None and req.eval is not None:
        raise UserError("--eval goes with --passage or --examples; in a stream each passage carries its own questions")
    check_edit_request(req, base_row)
    check_text(req.message, "-m", 10_000)
    _check_writer_options(req)


def _check_writer_options(req) -> None:
    chosen = [name for name, given in (("--writer", req.writer is not None), ("--no-writer", req.no_writer),
                                       ("--self-edits", req.self_edits is not None)) if given]
    if len(chosen) > 1:
        raise UserError(f"give at most one of {', '.join(chosen)}: each names who writes the self-edits")
    if chosen and req.examples is not None:
        raise UserError(f"{chosen[0]} goes with passages; the corrections of --examples are the model's own")
    if req.source is not None:
        if req.self_edits is None:
            raise UserError("--source labels a --self-edits file; give --self-edits FILE")
        check_text(req.source, "--source", 200)


def check_edit_request(req, base_row: dict | None) -> None:
    """Every option of `seal edit`, before anything is read or loaded."""
    check_number("--candidates", req.candidates, low=1, high=64, integer=True)
    check_number("--lr", req.lr, low=0, low_open=True, high=1e6)
    check_number("--epochs", req.epochs, low=1, high=1000, integer=True)
    check_number("--batch-size", req.batch_size, low=1, high=4096, integer=True)
    check_number("--r", req.r, low=1, high=4096, integer=True)
    check_number("--alpha", req.alpha, low=0, low_open=True, high=1e6)
    check_number("--temperature", req.temperature, low=0, high=10)
    check_number("--top-p", req.top_p, low=0, low_open=True, high=1)
    check_number("--max-tokens", req.max_new_tokens, low=1, high=4096, integer=True)
    check_number("--seed", req.seed, low=0, high=2**32 - 1, integer=True)
    check_number("--kl", req.kl, low=0, high=1e4)
    check_number("--race", req.race, low=0, high=1, high_open=True)
    if req.style not in STYLES:
        raise UserError(f"--style must be one of {', '.join(STYLES)}, not {req.style!r}")
    check_device_name(req.device)
    check_targets(req.target_modules, base_row)
    if req.threads is not None:
        check_number("--threads", req.threads, low=1, high=1024, integer=True)
    check_number("--answer-tokens", req.answer_tokens, low=1, high=4096, integer=True)
    if req.workers is not None or req.ray is not None:
        check_cluster_request(req)


def ray_module():
    """The ``ray`` module, or a one-line UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--workers and --ray need Ray, an optional extra: {INSTALL}") from None
    return ray


def check_cluster_request(req) -> None:
    """``--workers`` and ``--ray``, checked with the other options (torch-free; imports Ray)."""
    if req.workers is not None:
        check_number("--workers", req.workers, low=1, high=1024, integer=True)
    if req.ray is not None:
        if not isinstance(req.ray, str) or not req.ray.strip() or len(req.ray) > 500 \
                or any(ch.isspace() or ord(ch) < 32 for ch in req.ray):
            raise UserError("--ray takes a Ray address: auto, HOST:PORT or ray://HOST:10001")
    ray_module()
