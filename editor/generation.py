"""Prompt formatting and batched decoding shared by reflection and evaluation.

Questions, self-edit requests and training conversations all go through the tokenizer's chat
template when it has one: FINDINGS showed that asking an instruct model in raw text makes it
loop, and that training and asking in different formats costs recall.

    >>> from seal.editor.generation import chat_prompt, generate_completions
    >>> prompt = chat_prompt(tokenizer, "What is the capital of France?")
    >>> generate_completions(model, tokenizer, [prompt], max_new_tokens=16)
    ['The capital of France is Paris.']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, user: str, *, system: str | None = None) -> str:
    """The text that asks ``user`` and leaves the model at the start of its reply.

    Falls back to ``"User: …\\nAssistant:"`` for tokenizers without a chat template.

        >>> chat_prompt(tokenizer, "Name a prime number.")
        '<|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\nName a prime number.<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if has_chat_template(tokenizer):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
    head = f"{system}\n\n" if system else ""
    return f"{head}User: {user}\nAssistant:"


def chat_example(tokenizer: Any, user: str, assistant: str, *, system: str | None = None) -> str:
    """A whole exchange as one training string, in the same format questions are asked in.

        >>> chat_example(tokenizer, "Capital of France?", "Paris.")
        '<|im_start|>system\\n…<|im_start|>user\\nCapital of France?<|im_end|>\\n<|im_start|>assistant\\nParis.<|im_end|>\\n'
    """
    if has_chat_template(tokenizer):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    eos = tokenizer.eos_token or ""
    return f"{chat_prompt(tokenizer, user, system=system)} {assistant}{eos}"


@contextlib.contextmanager
def padding_side(tokenizer: Any, side: str) -> Iterator[Any]:
    """Temporarily pad on ``side``: left for generation, right for scoring."""
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = old


@contextlib.contextmanager
def seeded(seed: int | None, device: Any = None) -> Iterator[None]:
    """Seed torch inside the block without disturbing the caller's random state."""
    if seed is None:
        yield
        return
    devices = []
    if device is not None and str(device).startswith("cuda"):
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif configured:
        ids.extend(int(i) for i in configured)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
    batch_size: int | None = None,
) -> list[str]:
    """Decode continuations of already formatted ``prompts`` in batched ``generate`` calls.

    Prompts are left-padded so every row's continuation starts at the same column. Returns
    ``len(prompts) * num_return_sequences`` strings, grouped by prompt. Sampling with a seed is
    reproducible on one device; top-k is disabled so only ``top_p`` truncates (as in vLLM,
    which SEAL used).

        >>> generate_completions(model, tok, [p], max_new_tokens=64, do_sample=True,
        ...                      temperature=0.7, num_return_sequences=4, seed=0)
        ['…', '…', '…', '…']
    """
    from transformers import GenerationConfig

    if not prompts:
        return []
    if do_sample and temperature <= 0:
        do_sample = False  # temperature 0 means greedy, as in vLLM/OpenAI
    device = model_device(model)
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "num_return_sequences": num_return_sequences,
        "pad_token_id": pad_id,
        "eos_token_id": eos,
    }
    if do_sample:
        config_kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
    generation_config = GenerationConfig(**config_kwargs)
    add_special = not has_chat_template(tokenizer)
    step = batch_size or len(prompts)
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with seeded(seed, device), padding_side(tokenizer, "left"), torch.inference_mode():
            for start in range(0, len(prompts), step):
                chunk = list(prompts[start : start + step])
                enc = tokenizer(
                    chunk, return_tensors="pt", padding=True, add_special_tokens=add_special
                ).to(device)
                out = model.generate(**enc, generation_config=generation_config)
                new = out[:, enc["input_ids"].shape[1] :]
                outputs.extend(
                    t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)
                )
    finally:
        model.train(was_training)
    return outputs
