"""Edit: LoRA SFT of one child adapter on a self-edit, starting from the parent adapter.

The base is loaded once per command and stays frozen. Each call attaches one adapter to it
(fresh, or a trainable copy of the parent), trains, saves, and takes the adapter off again, so
the same loaded base serves K candidates:

    >>> from seal.editor.train import train_adapter, adapter_applied
    >>> for i, seqs in enumerate(candidate_sequences):                      # doctest: +SKIP
    ...     record = train_adapter(base.model, base.tokenizer, seqs,
    ...                            parent_adapter_dir=parent_dir, out_dir=work / f"cand{i}",
    ...                            seed=i, base_name=base.name)
    ...     with adapter_applied(base.model, work / f"cand{i}") as edited:
    ...         scores = qa_scores(edited, base.tokenizer, questions)

Evaluation reloads the adapter from the saved folder on purpose: what is scored is exactly the
bytes that will be stored.

Defaults, and why (SmolLM2-135M on 2 CPU threads):

- ``target_modules="all-linear"``: with only q/v the loss stays near 1.9 on a passage; with
  all linear layers it reaches 0.1-0.3 and recall follows (containment 0.045 → 0.159 on the
  first 20 SEAL passages, bench/knowledge.py's recipe, bench/results/findings-2026-11-27.md).
- ``r=32, alpha=64``, AdamW with linear decay, batch 1, loss on all tokens: the measured
  recipe. ``lr=3e-4`` rather than SEAL's 1e-3, for the drift measured below; the same
  default as `seal edit` (one constant, :data:`seal.editor.request.DEFAULT_LR`).
- ``epochs=5`` (was 10, SEAL's recipe): the recipe sweep on 20 SEAL passages (README,
  ``bench/recipe_sweep.py``) found 10 epochs no better than 5 on the passages' questions and worse
  on retention (paired CIs over passages), at twice the training time. Drift per edit at the
  old settings, measured by hand on one passage with four implication lines (no bench file), was
  large (JS vs base ≈ 0.14-0.19 nats on the drift probes, anchor retention
  0.575 → 0.40-0.45); lr 3e-4 kept the recall with JS 0.12 and retention 0.55.
- ``lora_dropout=0``: the data is tiny and dropout would make runs depend on RNG draws during
  training, not just on the seed-fixed initialisation and order.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .generation import model_device, seeded
from .kl_anchor import AnchorCache, AnchorText, parent_key, record_anchor
from .request import DEFAULT_ALPHA, DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_R  # one recipe, torch-free there
from .request import DEFAULT_TARGETS as DEFAULT_TARGET_MODULES

DEFAULT_BATCH_SIZE = 1
DEFAULT_MAX_LENGTH = 512


@dataclass
class Leg:
    """A training run in two legs: the first stops after ``share`` of the steps (at least one),
    saving the adapter so far; the second goes on from there to the end, as if it had never
    stopped (the same weights, optimizer state, schedule, data order and anchor text per step; a
    test compares the bytes).

    After the first leg ``step``, ``optimizer`` (AdamW's state), ``losses`` and ``folder`` (the
    adapter saved there) say where it stopped (``optimizer`` is None when it ran to the end);
    train again with the same leg to finish.
    """

    share: float
    step: int = 0
    total: int = 0
    optimizer: dict | None = None
    losses: list[float] = field(default_factory=list)
    folder: Path | None = None
    anchor: Any = None  # the parent's distributions the first leg held the adapter to (kl_anchor.Anchor)

    def stop_at(self, total: int) -> int | None:
        """The step the next leg stops after (None: the last)."""
        return None if self.folder is not None else max(1, math.ceil(self.share * total))


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def has_adapter_layers(model: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def require_plain_base(model: Any) -> None:
    if _is_peft(model) or has_adapter_layers(model):
        raise ValueError(
            "pass the plain base model (LoadedBase.model), not a model with an adapter attached; "
            "adapters are attached and removed per call"
        )


def detach_adapters(peft_model: Any) -> Any:
    """Remove every adapter from ``peft_model`` and return the restored base, unmerged.

    PEFT injects LoRA layers into the base's modules in place and also leaves a
    ``peft_config`` attribute on it; both are undone so the next adapter starts clean.
    """
    base = peft_model.unload()
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in base.__dict__:
            delattr(base, attr)
    base.requires_grad_(False)
    base.eval()
    return base


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    # peft still calls transformers' deprecated is_gradient_checkpointing; not ours to fix.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


@contextlib.contextmanager
def adapter_applied(model_base: Any, adapter_dir: Path | str | None) -> Iterator[Any]:
    """The base with the adapter in ``adapter_dir`` attached (inference only) for the block.

    ``adapter_dir=None`` yields the base itself, so "parent = no adapter" needs no special case.

        >>> with adapter_applied(base.model, "adapters/v3") as m:  # doctest: +SKIP
        ...     retention_accuracy(m, base.tokenizer)
    """
    if adapter_dir is None:
        yield model_base
        return
    from peft import PeftModel

    require_plain_base(model_base)
    with quiet_peft():
        peft_model = PeftModel.from_pretrained(model_base, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    try:
        yield peft_model
    finally:
        detach_adapters(peft_model)


def encode(tokenizer: Any, sequences: Sequence[str], max_length: int) -> list[list[int]]:
    eos_text = tokenizer.eos_token or ""
    eos_id = tokenizer.eos_token_id
    encoded: list[list[int]] = []
    for text in sequences:
        # Chat-formatted strings carry their own special tokens; raw text gets an EOS so the
        # model learns where a fact ends instead of running on.
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)[
            "input_ids"
        ]
        if eos_id is not None and eos_text and not text.rstrip().endswith(eos_text):
            ids = ids[: max_length - 1] + [eos_id]
        if len(ids) >= 2:
            encoded.append(ids)
    return encoded


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows right-padded to the longest: the token ids and the attention mask (1 on real tokens).

        >>> ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def _collate(batch: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    if all(len(ids) == width for ids in batch):
        # No padding: the causal mask alone is the same attention, and an all-ones mask makes
        # transformers build and apply a dense mask (2-4% of a CPU training step, measured).
        ids = torch.tensor(batch, dtype=torch.long, device=device)
        return {"input_ids": ids, "labels": ids}
    input_ids, attention = pad_right(batch, pad_id)
    labels = input_ids.masked_fill(attention == 0, -100)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention.to(device),
        "labels": labels.to(device),
    }


def train_adapter(
    model_base: Any,
    tokenizer: Any,
    sequences: Sequence[str],
    *,
    out_dir: Path | str,
    parent_adapter_dir: Path | str | None = None,
    r: int = DEFAULT_R,
    alpha: int = DEFAULT_ALPHA,
    target_modules: str | list[str] = DEFAULT_TARGET_MODULES,
    lora_dropout: float = 0.0,
    lr: float = DEFAULT_LR,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    base_name: str | None = None,
    on_step: Callable[[], None] | None = None,
    on_losses: Callable[[int, list[float]], None] | None = None,
    flush_s: float = 1.0,
    anchor_texts: Sequence[AnchorText] = (),
    kl_weight: float = 0.0,
    anchor_cache: AnchorCache | None = None,
    leg: Leg | None = None,
) -> dict[str, Any]:
    """Train one LoRA adapter on ``sequences`` and save it to ``out_dir``; return the record.

    With ``parent_adapter_dir`` the adapter starts from the parent's weights and keeps the
    parent's rank, alpha and targets (the ``r``/``alpha``/``target_modules`` arguments are then
    ignored, and the record says what was used). The base model is left exactly as it was.
    ``out_dir`` receives ``adapter_config.json`` + ``adapter_model.safetensors``.
    Deterministic on CPU for a given seed (initialisation and data order are seeded; no dropout).

    Losses stay on the device while training; they are read back at most every ``flush_s``
    seconds (one host sync per flush, none per step) and handed to ``on_losses(first_step,
    values)``. ``on_step()`` ticks once per step without reading anything. A NaN or infinite loss,
    or non-finite adapter weights at the end, stop training: nothing is saved, and the record's
    ``diverged`` says why (non-finite losses are recorded as None, JSON's null).
    ``anchor_cache`` (a warm session's): the parent's distributions on anchor texts it has already
    recorded are reused (:class:`seal.editor.kl_anchor.AnchorCache`). ``leg``: train in two legs
    (:class:`Leg`); the first leg's record counts its own steps only.

        >>> rec = train_adapter(base.model, base.tokenizer, ["Paris\\nParis is in France."],  # doctest: +SKIP
        ...                     out_dir="out/cand0", seed=0, base_name=base.name)
        >>> rec["steps"], rec["loss_final"] < rec["loss_first"], rec["diverged"]             # doctest: +SKIP
        (10, True, None)

    Raises:
        ValueError: no usable sequence, or the model passed already has an adapter attached.
    """
    require_plain_base(model_base)
    data = encode(tokenizer, sequences, max_length)
    if not data:
        raise ValueError("no training sequence with at least two tokens")
    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    run_device = torch.device(device) if device is not None else model_device(model_base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with seeded(seed, run_device), quiet_peft():
        resuming = leg is not None and leg.folder is not None
        peft_model = attach_trainable(model_base, leg.folder if resuming else parent_adapter_dir, r=r, alpha=alpha,
                                       target_modules=target_modules, lora_dropout=lora_dropout)
        try:
            used = peft_model.peft_config["default"]
            params = [p for p in peft_model.parameters() if p.requires_grad]
            batches = epoch_batches(data, batch_size, epochs, seed)
            log = LossLog(on_losses, flush_s)
            if resuming:  # on from the first leg: its losses, and the parent's distributions it recorded
                log.values, anchor = list(leg.losses), leg.anchor
            else:
                anchor = record_anchor(peft_model, tokenizer, anchor_texts, kl_weight, cache=anchor_cache,
                                       parent=_anchor_parent(anchor_cache, anchor_texts, kl_weight, parent_adapter_dir))
            state = _fit(peft_model, params, batches, pad_id, run_device, lr=lr, max_grad_norm=max_grad_norm,
                         log=log, on_step=on_step, anchor=anchor, kl_weight=kl_weight,
                         start=leg.step if resuming else 0, stop=leg.stop_at(len(batches)) if leg is not None else None,
                         optimizer_state=leg.optimizer if resuming else None)
            diverged = log.diverged or weights_diverged(params)
            peft_model.eval()
            if diverged is None:
                save_adapter(peft_model, used, out_dir, base_name or getattr(model_base.config, "_name_or_path", None))
            record = train_record(used, log.values, diverged, lr=lr, epochs=epochs, batch_size=batch_size,
                                   max_length=max_length, max_grad_norm=max_grad_norm, seed=seed, device=run_device,
                                   dtype=next(model_base.parameters()).dtype, from_parent=parent_adapter_dir is not None,
                                   data=data, trainable=sum(p.numel() for p in params))
            if anchor:
                record.update(kl_weight=kl_weight, kl_anchor_texts=len(anchor.snapshots), kl_anchor_sha256=anchor.digest)
            if leg is not None:
                _after_leg(leg, state, log.values, len(batches), out_dir, diverged)
                leg.anchor = anchor
        finally:
            detach_adapters(peft_model)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _after_leg(leg: Leg, state: dict | None, losses: list[float], total: int, out_dir: Path, diverged) -> None:
    """Where a first leg stopped (its optimizer's ``state``), or a finished second leg's end."""
    leg.total, leg.losses, leg.step = total, list(losses), len(losses)
    if state is not None and diverged is None:
        leg.optimizer, leg.folder = state, out_dir
    else:
        leg.optimizer = None


def _anchor_parent(cache, texts, weight: float, parent_adapter_dir) -> str | None:
    """The parent's cache key, only when the anchor will be recorded into a cache."""
    return parent_key(parent_adapter_dir) if cache is not None and texts and weight > 0 else None


def attach_trainable(model_base: Any, parent_adapter_dir, *, r, alpha, target_modules, lora_dropout) -> Any:
    """A trainable LoRA on the base: a copy of the parent's, or a fresh one (seeded by the caller)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if parent_adapter_dir is not None:
        return PeftModel.from_pretrained(model_base, str(parent_adapter_dir), is_trainable=True)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, lora_dropout=lora_dropout,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model_base, config)


def epoch_batches(data: list[list[int]], batch_size: int, epochs: int, seed: int) -> list[list[list[int]]]:
    """The training batches in order: each epoch shuffles the sequences with a seeded generator."""
    order = list(range(len(data)))
    shuffler = random.Random(seed)
    batches = []
    for _ in range(epochs):
        shuffler.shuffle(order)
        batches += [[data[i] for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]
    return batches


def _step_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of one batch (a seam: the divergence tests replace it with a NaN)."""
    return model(**batch).loss


class LossLog:
    """Losses kept on the device, read back in flushes; notes the first non-finite one."""

    def __init__(self, on_losses: Callable[[int, list[float]], None] | None, flush_s: float):
        self.on_losses, self.flush_s = on_losses, flush_s
        self.pending: list[torch.Tensor] = []
        self.values: list[float] = []
        self.diverged: str | None = None
        self.last = time.perf_counter()

    def add(self, loss: torch.Tensor, last: bool) -> bool:
        """Keep one step's loss; flush when due. False once training must stop."""
        self.pending.append(loss.detach())
        now = time.perf_counter()
        if last or now - self.last >= self.flush_s:
            self.last = now
            return self.flush()
        return True

    def flush(self) -> bool:
        if not self.pending:
            return self.diverged is None
        first = len(self.values) + 1
        values = torch.stack(self.pending).float().tolist()  # the one host sync per flush
        self.pending = []
        self.values += values
        if self.on_losses is not None:
            self.on_losses(first, values)
        bad = next((first + i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None and self.diverged is None:
            self.diverged = f"non-finite training loss ({values[bad - first]}) at step {bad}"
        return self.diverged is None


def _fit(peft_model: Any, params: list, batches: list, pad_id: int, device: torch.device, *, lr: float,
         max_grad_norm: float, log: LossLog, on_step: Callable[[], None] | None, anchor=None,
         kl_weight: float = 0.0, start: int = 0, stop: int | None = None,
         optimizer_state: dict | None = None) -> dict | None:
    """The adapter's steps: one padded batch of sequences each, loss on all tokens (plus the KL
    anchor's term, on one anchor text per step, when there is one). ``start``, ``stop`` and
    ``optimizer_state``: a leg of the steps (:class:`Leg`), as :func:`fit_steps`."""
    steps = iter(range(start, len(batches)))

    def loss_of(batch):
        loss = _step_loss(peft_model, _collate(batch, pad_id, device))
        return loss if anchor is None else loss + kl_weight * anchor.kl(peft_model, next(steps))

    return fit_steps(peft_model, params, batches, loss_of, lr=lr, max_grad_norm=max_grad_norm,
                     fused=device.type == "cuda", log=log, on_step=on_step, start=start, stop=stop,
                     optimizer_state=optimizer_state)


def fit_steps(peft_model: Any, params: list, batches: Sequence, loss_of: Callable[[Any], torch.Tensor], *, lr: float,
              max_grad_norm: float, fused: bool, log: LossLog, on_step: Callable[[], None] | None,
              start: int = 0, stop: int | None = None, optimizer_state: dict | None = None) -> dict | None:
    """AdamW with a linear decay to zero over all steps, gradient clipping, no host sync per step.

    Shared by the adapter (:func:`_fit`) and the writer (``seal.editor.learn``): ``loss_of(batch)``
    is the only thing they do differently. A leg: steps ``start`` (with the optimizer's state
    where the leg before stopped) up to ``stop``; returns the optimizer's state when it stopped
    before the last step, else None.
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, **({"fused": True} if fused else {}))
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    total = max(1, len(batches))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - (s + start) / total))
    end = len(batches) if stop is None else min(stop, len(batches))
    peft_model.train()
    for step in range(start + 1, end + 1):
        loss = loss_of(batches[step - 1])
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step()
        if not log.add(loss, last=step == end):
            break
    log.flush()
    return optimizer.state_dict() if end < len(batches) and log.diverged is None else None


def weights_diverged(params: list) -> str | None:
    if not params:
        return None
    worst = torch.stack([p.detach().abs().max().float() for p in params]).max()
    value = float(worst)
    return None if math.isfinite(value) else "non-finite adapter weights after training"


def save_adapter(peft_model: Any, used: Any, out_dir: Path, base_name: str | None) -> None:
    # The base's config path is machine-local (a cache folder); a name is portable and keeps
    # adapter_config.json, hence the blob digest, the same on every machine.
    used.base_model_name_or_path = base_name
    if isinstance(used.target_modules, (set, frozenset)):
        # PEFT writes a set in the process's hash order, which differs between processes: sorted,
        # one adapter trained twice (or in two legs, the second loading the first's) is one blob
        used.target_modules = sorted(used.target_modules)
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers="auto" would look the base name up on the Hub to compare
    # vocabularies; LoRA here never targets embeddings, so say so and stay offline.
    peft_model.save_pretrained(str(out_dir), safe_serialization=True, save_embedding_layers=False)


def train_record(used: Any, losses: list[float], diverged: str | None, *, lr, epochs, batch_size, max_length,
                  max_grad_norm, seed, device, dtype, from_parent, data, trainable) -> dict[str, Any]:
    targets = used.target_modules
    if isinstance(targets, (set, frozenset)):
        targets = sorted(targets)
    kept = [v if math.isfinite(v) else None for v in losses]
    finite = [v for v in kept if v is not None]
    return {
        "method": "lora-sft", "r": int(used.r), "alpha": int(used.lora_alpha), "target_modules": targets,
        "lora_dropout": float(used.lora_dropout), "lr": lr, "epochs": epochs, "batch_size": batch_size,
        "max_length": max_length, "max_grad_norm": max_grad_norm, "optimizer": "adamw",
        "schedule": "linear-decay", "seed": seed, "device": str(device),
        "dtype": str(dtype).removeprefix("torch."), "from_parent": from_parent, "n_sequences": len(data),
        "n_tokens": sum(len(ids) for ids in data), "trainable_params": trainable, "steps": len(losses),
        "loss_first": kept[0] if kept else None, "loss_final": kept[-1] if kept else None,
        "loss_mean": sum(finite) / len(finite) if finite else None, "losses": kept,
        "loss_nonfinite": len(finite) != len(kept), "diverged": diverged,
    }
