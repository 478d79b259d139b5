"""K candidates' LoRAs trained together: one batched forward and backward pass per step.

On a GPU, a 135M model's training step is bound by kernel launches and Python, not arithmetic:
four candidates one after the other cost four times one. Here the K candidates share every
forward pass instead: row group ``k`` of the batch is candidate ``k``'s step, and a forward hook
on each targeted linear layer adds that group's own ``scale·B_k·A_k·x`` (a batched matmul over
the groups). With the KL anchor (``--kl``), a second batched forward per step scores row ``k``
= candidate ``k``'s anchor text for the step, and each candidate's loss adds its own KL to the
parent, as :func:`seal.editor.train.train_adapter` does. Each candidate keeps its own parameters, optimizer group (AdamW, its own linear
decay), gradient clipping, loss and divergence check; the loss summed over candidates gives each
candidate exactly its own gradient, since rows never interact. Initialisation (PEFT's, under the
candidate's seed), data order, steps and the saved files are those of
:func:`seal.editor.train.train_adapter`; the test pins the losses and weights to the one-by-one
path within float tolerance.

    >>> records = train_together(session, attempt, candidates, req)      # doctest: +SKIP
    >>> [r["steps"] for r in records]                                     # doctest: +SKIP
    [20, 20, 30, 20]

The engine takes this path on CUDA (:func:`seal.editor.stages.train`); on a CPU the arithmetic is
the cost and one after the other is as fast, so it is used there only by the test.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from seal.registry.adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE

from .attach import SAVED_PREFIX, UNSUPPORTED_KEYS
from .generation import seeded
from .kl_anchor import kl_from_logits, parent_key, record_anchor
from .replay import anchor_texts
from .train import (attach_trainable, epoch_batches, encode, LossLog, pad_right, quiet_peft, save_adapter, train_record,
                    weights_diverged, detach_adapters)

_SUFFIX_A, _SUFFIX_B = ".lora_A.default.weight", ".lora_B.default.weight"


@dataclass
class Lane:
    """One candidate inside the batched pass: its factors, data, optimizer group and losses."""

    index: int
    seed: int
    a: dict[str, torch.nn.Parameter]  # module name -> lora_A [r, in]
    b: dict[str, torch.nn.Parameter]  # module name -> lora_B [out, r]
    batches: list
    n_tokens: int
    n_sequences: int
    config: Any
    log: LossLog
    lengths: list[int] = field(default_factory=list)
    done: bool = False
    anchor: Any = None  # the parent's distributions on this candidate's KL anchor texts (kl_anchor.Anchor)

    def params(self) -> list[torch.nn.Parameter]:
        return [*self.a.values(), *self.b.values()]


def train_together(session, attempt, candidates, req, *, on_step: Callable[[], None] | None = None,
                   device: str | None = None) -> list[dict]:
    """Train every candidate's adapter in one batched pass; the same records as train_adapter."""
    started = time.perf_counter()
    model, tok = session.model, session.tok
    run_device = torch.device(device or session.device)
    parent_dir = attempt.parent.adapter_dir
    tracker = session.tracker
    lanes = []
    parent = parent_key(parent_dir) if req.kl > 0 else None  # the K lanes record the anchor at one parent
    for c in candidates:
        def on_losses(first, values, c=c):
            if tracker is not None:
                tracker.log_losses(c.run_id, first, values)
        texts = anchor_texts(session, c.self_edit.replay or [], req.kl)
        lanes.append(_lane(model, tok, c.index, c.seed, c.self_edit.sequences, parent_dir, req, on_losses, texts,
                           cache=session.anchor_cache, parent=parent))
    _fit_together(model, lanes, tok, run_device, lr=req.lr, on_step=on_step, kl_weight=req.kl)
    records = []
    for lane, c in zip(lanes, candidates):
        diverged = lane.log.diverged or weights_diverged(lane.params())
        if diverged is None:
            _save(model, lane, parent_dir, session.work / f"candidate{c.index}", session.base.name)
        record = train_record(lane.config, lane.log.values, diverged, lr=req.lr, epochs=req.epochs,
                               batch_size=req.batch_size, max_length=512, max_grad_norm=1.0, seed=lane.seed,
                               device=run_device, dtype=next(model.parameters()).dtype,
                               from_parent=parent_dir is not None, data=[[0] * n for n in lane.lengths],
                               trainable=sum(p.numel() for p in lane.params()))
        record["seconds"] = round(time.perf_counter() - started, 3)
        record["batched_with"] = len(candidates)
        if lane.anchor:
            record.update(kl_weight=req.kl, kl_anchor_texts=len(lane.anchor.snapshots),
                          kl_anchor_sha256=lane.anchor.digest)
        records.append(record)
    return records


def _lane(model, tok, index: int, seed: int, sequences, parent_dir, req, on_losses, texts=(), *,
          cache=None, parent: str | None = None) -> Lane:
    """A candidate's starting factors exactly as train_adapter would attach them (same seed, same init)."""
    data = encode(tok, sequences, 512)
    if not data:
        raise ValueError("no training sequence with at least two tokens")
    device = next(model.parameters()).device
    with seeded(seed, device), quiet_peft():
        peft_model = attach_trainable(model, parent_dir, r=req.r, alpha=req.alpha, target_modules=req.target_modules,
                                       lora_dropout=0.0)
        try:
            config = peft_model.peft_config["default"]
            named = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
            anchor = record_anchor(peft_model, tok, texts, req.kl, cache=cache, parent=parent)  # the parent, before a step
        finally:
            detach_adapters(peft_model)
    a, b = {}, {}
    for name, tensor in named.items():
        if name.endswith(_SUFFIX_A):
            a[name[len(SAVED_PREFIX):-len(_SUFFIX_A)]] = torch.nn.Parameter(tensor)
        elif name.endswith(_SUFFIX_B):
            b[name[len(SAVED_PREFIX):-len(_SUFFIX_B)]] = torch.nn.Parameter(tensor)
        else:
            raise ValueError(f"batched training handles plain LoRA factors only, not {name}")
    return Lane(index=index, seed=seed, a=a, b=b, batches=epoch_batches(data, req.batch_size, req.epochs, seed),
                n_tokens=sum(len(d) for d in data), n_sequences=len(data), config=config,
                log=LossLog(on_losses, 1.0), lengths=[len(d) for d in data], anchor=anchor)


def _fit_together(model, lanes: list[Lane], tok, device: torch.device, *, lr: float,
                  on_step: Callable[[], None] | None, kl_weight: float = 0.0) -> None:
    """Every lane's AdamW steps, lanes with steps left sharing one forward/backward per step."""
    groups = [{"params": lane.params()} for lane in lanes]
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, **fused)
    schedules = [_decay(max(1, len(lane.batches))) for lane in lanes]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    scale = {id(lane): lane.config.lora_alpha / lane.config.r for lane in lanes}
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    modules = dict(model.named_modules())
    names = sorted(lanes[0].a)
    state = _HookState()
    hooks = [modules[n].register_forward_hook(_hook(n, state)) for n in names]
    try:
        for step in range(max(len(lane.batches) for lane in lanes)):
            active = [lane for lane in lanes if not lane.done and step < len(lane.batches)]
            if not active:
                break
            state.lanes, state.scale = active, [scale[id(lane)] for lane in active]
            losses = _step(model, active, step, pad_id, device, kl_weight)
            for lane in active:
                torch.nn.utils.clip_grad_norm_(lane.params(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                for _ in active:
                    on_step()
            for lane, loss in zip(active, losses):
                if not lane.log.add(loss, last=step == len(lane.batches) - 1):
                    lane.done = True  # diverged: its factors stop changing
    finally:
        for hook in hooks:
            hook.remove()
    for lane in lanes:
        lane.log.flush()


def _decay(total: int):
    return lambda s: max(0.0, 1.0 - s / total)


class _HookState:
    """Which lanes the current forward pass serves, in row-group order, and their LoRA scales."""

    lanes: list[Lane] = []
    scale: list[float] = []


def _hook(name: str, state: _HookState):
    def add_lora(module, inputs, output):
        x = inputs[0]
        k = len(state.lanes)
        if x.shape[0] % k:
            raise ValueError(f"a batch of {x.shape[0]} rows cannot be split among {k} adapters")
        a = torch.stack([lane.a[name] for lane in state.lanes])  # [k, r, in]
        b = torch.stack([lane.b[name] for lane in state.lanes])  # [k, out, r]
        s = torch.tensor(state.scale, dtype=a.dtype, device=a.device).view(k, 1, 1)
        grouped = x.reshape(k, -1, x.shape[-1]).to(a.dtype)  # row group i is lane i's batch
        delta = torch.bmm(torch.bmm(grouped, a.transpose(1, 2)), b.transpose(1, 2)) * s
        return (output + delta.reshape(output.shape)).to(output.dtype)

    return add_lora


def _anchor_kl(model, active: list[Lane], step: int, pad_id: int, device: torch.device) -> list[torch.Tensor]:
    """Each lane's KL to the parent on its anchor text for ``step``, one batched forward."""
    snaps = [lane.anchor.snapshots[step % len(lane.anchor.snapshots)] for lane in active]
    input_ids, attention = pad_right([s.ids[0].tolist() for s in snaps], pad_id)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
    return [kl_from_logits(logits[row, :s.ids.shape[1] - 1], s) for row, s in enumerate(snaps)]


def _step(model, active: list[Lane], step: int, pad_id: int, device: torch.device,
          kl_weight: float = 0.0) -> list[torch.Tensor]:
    """One forward and backward for every active lane; each lane's loss stays on the device."""
    rows = max(len(lane.batches[step]) for lane in active)
    batch, owned = [], []
    for lane in active:
        own = lane.batches[step]
        # A ragged final batch is padded with one-token rows that carry no loss.
        batch += own + [[pad_id]] * (rows - len(own))
        owned += [True] * len(own) + [False] * (rows - len(own))
    input_ids, attention = pad_right(batch, pad_id)
    labels = input_ids.masked_fill((attention == 0) | ~torch.tensor(owned)[:, None], -100)
    input_ids, attention, labels = input_ids.to(device), attention.to(device), labels.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
    # As transformers' causal-LM loss: fp32 logits, shifted labels, the mean over the lane's own tokens.
    shift_labels = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                  shift_labels.reshape(-1), ignore_index=-100, reduction="none")
    per_token = per_token.view(len(batch), -1)
    counted = (shift_labels != -100).float()
    losses = [per_token[i * rows:(i + 1) * rows].sum() / counted[i * rows:(i + 1) * rows].sum()
              for i in range(len(active))]
    if kl_weight and all(lane.anchor for lane in active):
        kls = _anchor_kl(model, active, step, pad_id, device)
        losses = [loss + kl_weight * kl for loss, kl in zip(losses, kls)]
    torch.stack(losses).sum().backward()
    return [loss.detach() for loss in losses]


def _save(model, lane: Lane, parent_dir, out_dir: Path, base_name: str) -> None:
    """The lane's factors written exactly as train_adapter writes them (PEFT's save_pretrained)."""
    with quiet_peft():
        peft_model = attach_trainable(model, parent_dir, r=lane.config.r, alpha=lane.config.lora_alpha,
                                       target_modules=lane.config.target_modules, lora_dropout=0.0)
        try:
            params = dict(peft_model.named_parameters())
            with torch.no_grad():
                for name, value in lane.a.items():
                    params[f"{SAVED_PREFIX}{name}{_SUFFIX_A}"].copy_(value)
                for name, value in lane.b.items():
                    params[f"{SAVED_PREFIX}{name}{_SUFFIX_B}"].copy_(value)
            peft_model.eval()
            save_adapter(peft_model, peft_model.peft_config["default"], out_dir, base_name)
        finally:
            detach_adapters(peft_model)


# --- scoring K adapters at once ------------------------------------------------------------------

@contextlib.contextmanager
def lanes_attached(model, adapter_dirs: list[Path | None]) -> Iterator[int]:
    """K stored adapters on one base at once, for inference: row group ``k`` of every batch (rows
    ``k·n … (k+1)·n - 1``) runs with adapter ``k`` (None: the bare base). Yields K. Every batch
    must hold K equal groups, adapter-major: :func:`seal.editor.measure.measure_lanes` lays its
    batches out so.

    Plain LoRA only (as :func:`seal.editor.attach.merge_plan` checks); the factors are applied in
    fp32 like PEFT's own layers, so a bf16 base gives what PEFT gives, one adapter at a time.
    Adapters of different ranks or targets are padded with zero factors, which add exactly 0.
    """
    device = next(model.parameters()).device
    loaded = [_factors(folder, device) for folder in adapter_dirs]
    names = sorted({name for lane in loaded for name in lane.a})
    if not names:
        raise ValueError("no adapter to attach; score the base on its own")
    modules = dict(model.named_modules())
    rank = max(a.shape[0] for lane in loaded for a in lane.a.values())
    lanes = [_padded(lane, names, modules, rank, device) for lane in loaded]
    state = _HookState()
    state.lanes, state.scale = lanes, [lane.scale for lane in lanes]
    hooks = [modules[n].register_forward_hook(_hook(n, state)) for n in names]
    try:
        yield len(lanes)
    finally:
        for hook in hooks:
            hook.remove()


def _factors(folder: Path | None, device) -> SimpleNamespace:
    import json

    from safetensors.torch import load_file


    if folder is None:
        return SimpleNamespace(a={}, b={}, scale=0.0)
    config = json.loads((Path(folder) / ADAPTER_CONFIG_FILE).read_text())
    if any(config.get(key) for key in UNSUPPORTED_KEYS) or config.get("bias", "none") != "none":
        raise ValueError(f"{folder} is not a plain LoRA; score it on its own")
    scale = config["lora_alpha"] / (math.sqrt(config["r"]) if config.get("use_rslora") else config["r"])
    tensors = load_file(str(Path(folder) / WEIGHTS_FILE), device=str(device))
    a = {k[len(SAVED_PREFIX):-len(".lora_A.weight")]: v.float() for k, v in tensors.items() if k.endswith(".lora_A.weight")}
    b = {k[len(SAVED_PREFIX):-len(".lora_B.weight")]: v.float() for k, v in tensors.items() if k.endswith(".lora_B.weight")}
    if sorted(a) != sorted(b):
        raise ValueError(f"{folder} has lora_A and lora_B for different modules")
    return SimpleNamespace(a=a, b=b, scale=scale)


def _padded(lane: SimpleNamespace, names: list[str], modules: dict, rank: int, device) -> SimpleNamespace:
    """Every module's factors at rank ``rank``: extra rows of A and columns of B are zeros."""
    a, b = {}, {}
    for name in names:
        weight = modules[name].weight
        pa = torch.zeros(rank, weight.shape[1], device=device)
        pb = torch.zeros(weight.shape[0], rank, device=device)
        if name in lane.a:
            r = lane.a[name].shape[0]
            pa[:r], pb[:, :r] = lane.a[name], lane.b[name]
        a[name], b[name] = pa, pb
    return SimpleNamespace(a=a, b=b, scale=lane.scale)


__all__ = ["train_together", "lanes_attached"]
