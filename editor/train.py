"""Edit: LoRA SFT of one child adapter on a self-edit, starting from the parent adapter.

The base is loaded once per command and stays frozen. Each call attaches one adapter to it
(fresh, or a trainable copy of the parent), trains, saves, and takes the adapter off again, so
the same loaded base serves K candidates:

    >>> from seal.editor.train import train_adapter, adapter_applied
    >>> for i, seqs in enumerate(candidate_sequences):
    ...     record = train_adapter(base.model, base.tokenizer, seqs,
    ...                            parent_adapter_dir=parent_dir, out_dir=work / f"cand{i}",
    ...                            seed=i, base_name=base.name)
    ...     with adapter_applied(base.model, work / f"cand{i}") as edited:
    ...         scores = qa_scores(edited, base.tokenizer, questions)

Evaluation reloads the adapter from the saved folder on purpose: what is scored is exactly the
bytes that will be stored.

Defaults, and why (SmolLM2-135M on 2 CPU threads, FINDINGS):

- ``target_modules="all-linear"``: with only q/v the loss stays near 1.9 on a passage; with
  all linear layers it reaches 0.1-0.3 and recall follows (containment 0.045 → 0.159).
- ``r=32, alpha=64, lr=1e-3``, AdamW with linear decay, batch 1, loss on all tokens: the
  measured recipe.
- ``epochs=10``: FINDINGS' recipe, and within the ~1 min CPU budget. Measured here on
  SmolLM2-135M (2 CPU threads): a passage plus four short implication lines (5 sequences,
  ~190 tokens) trains in about 21 s (50 steps, loss 4.2 → 0.06) and then answers 2 of 3
  no-context questions. 5 epochs took 10 s and also answered 2 of 3 (final loss 0.27) - too
  small a sample to drop FINDINGS' setting, but the knob to turn when K candidates must be
  cheap. Drift per edit at these settings is large (JS vs base ≈ 0.14-0.19 nats on the drift
  probes, anchor retention 0.575 → 0.40-0.45); lr 3e-4 kept the 2/3 recall with JS 0.12 and
  retention 0.55, which matters for the default gates.
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
from pathlib import Path
from typing import Any

import torch

from .generation import model_device, seeded

DEFAULT_R = 32
DEFAULT_ALPHA = 64
DEFAULT_LR = 1e-3
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 1
DEFAULT_MAX_LENGTH = 512
DEFAULT_TARGET_MODULES = "all-linear"


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _has_adapter_layers(model: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _require_plain_base(model: Any) -> None:
    if _is_peft(model) or _has_adapter_layers(model):
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
def _quiet_peft() -> Iterator[None]:
    # peft still calls transformers' deprecated is_gradient_checkpointing; not ours to fix.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


@contextlib.contextmanager
def adapter_applied(model_base: Any, adapter_dir: Path | str | None) -> Iterator[Any]:
    """The base with the adapter in ``adapter_dir`` attached (inference only) for the block.

    ``adapter_dir=None`` yields the base itself, so "parent = no adapter" needs no special case.

        >>> with adapter_applied(base.model, "adapters/v3") as m:
        ...     retention_accuracy(m, base.tokenizer)
    """
    if adapter_dir is None:
        yield model_base
        return
    from peft import PeftModel

    _require_plain_base(model_base)
    with _quiet_peft():
        peft_model = PeftModel.from_pretrained(model_base, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    try:
        yield peft_model
    finally:
        detach_adapters(peft_model)


def _encode(tokenizer: Any, sequences: Sequence[str], max_length: int) -> list[list[int]]:
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


def _collate(batch: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(ids)
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
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train one LoRA adapter on ``sequences`` and save it to ``out_dir``; return the record.

    With ``parent_adapter_dir`` the adapter starts from the parent's weights and keeps the
    parent's rank, alpha and targets (the ``r``/``alpha``/``target_modules`` arguments are then
    ignored, and the record says what was used). The base model is left exactly as it was.
    ``out_dir`` receives ``adapter_config.json`` + ``adapter_model.safetensors``.
    Deterministic on CPU for a given seed (initialisation and data order are seeded; no dropout).

        >>> rec = train_adapter(base.model, base.tokenizer, ["Paris\\nParis is in France."],
        ...                     out_dir="out/cand0", seed=0, base_name=base.name,
        ...                     on_step=lambda step, loss: print(step, loss))
        >>> rec["steps"], rec["loss_final"] < rec["loss_first"]
        (10, True)

    Raises:
        ValueError: no usable sequence, or the model passed already has an adapter attached.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    _require_plain_base(model_base)
    data = _encode(tokenizer, sequences, max_length)
    if not data:
        raise ValueError("no training sequence with at least two tokens")
    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    run_device = torch.device(device) if device is not None else model_device(model_base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out_dir = Path(out_dir)
    started = time.perf_counter()
    losses: list[float] = []
    with seeded(seed, run_device), _quiet_peft():
        if parent_adapter_dir is not None:
            peft_model = PeftModel.from_pretrained(
                model_base, str(parent_adapter_dir), is_trainable=True
            )
        else:
            config = LoraConfig(
                r=r,
                lora_alpha=alpha,
                target_modules=target_modules,
                lora_dropout=lora_dropout,
                bias="none",
                task_type="CAUSAL_LM",
            )
            peft_model = get_peft_model(model_base, config)
        try:
            used = peft_model.peft_config["default"]
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            steps_per_epoch = math.ceil(len(data) / batch_size)
            total = max(1, steps_per_epoch * epochs)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: max(0.0, 1.0 - s / total)
            )
            order = list(range(len(data)))
            shuffler = random.Random(seed)
            peft_model.train()
            step = 0
            for _ in range(epochs):
                shuffler.shuffle(order)
                for start in range(0, len(order), batch_size):
                    batch = _collate(
                        [data[i] for i in order[start : start + batch_size]], pad_id, run_device
                    )
                    loss = peft_model(**batch).loss
                    loss.backward()
                    if max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    value = float(loss.detach())
                    losses.append(value)
                    if on_step is not None:
                        on_step(step, value)
            peft_model.eval()
            # The base's config path is machine-local (a cache folder); a name is portable and
            # keeps adapter_config.json, hence the blob digest, the same on every machine.
            used.base_model_name_or_path = base_name or getattr(
                model_base.config, "_name_or_path", None
            )
            out_dir.mkdir(parents=True, exist_ok=True)
            # save_embedding_layers="auto" would look the base name up on the Hub to compare
            # vocabularies; LoRA here never targets embeddings, so say so and stay offline.
            peft_model.save_pretrained(
                str(out_dir), safe_serialization=True, save_embedding_layers=False
            )
            targets = used.target_modules
            if isinstance(targets, (set, frozenset)):
                targets = sorted(targets)
            record = {
                "method": "lora-sft",
                "r": int(used.r),
                "alpha": int(used.lora_alpha),
                "target_modules": targets,
                "lora_dropout": float(used.lora_dropout),
                "lr": lr,
                "epochs": epochs,
                "batch_size": batch_size,
                "max_length": max_length,
                "max_grad_norm": max_grad_norm,
                "optimizer": "adamw",
                "schedule": "linear-decay",
                "seed": seed,
                "device": str(run_device),
                "dtype": str(next(model_base.parameters()).dtype).removeprefix("torch."),
                "from_parent": parent_adapter_dir is not None,
                "n_sequences": len(data),
                "n_tokens": sum(len(ids) for ids in data),
                "trainable_params": sum(p.numel() for p in params),
                "steps": len(losses),
                "loss_first": losses[0] if losses else None,
                "loss_final": losses[-1] if losses else None,
                "loss_mean": sum(losses) / len(losses) if losses else None,
                "losses": losses,
            }
        finally:
            detach_adapters(peft_model)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record
