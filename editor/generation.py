"""Prompt formatting and batched decoding shared by reflection and evaluation.

Questions, self-edit requests and training conversations all go through the tokenizer's chat
template when it has one: asking an instruct model in raw text made SmolLM2 loop, and training
and asking in different formats costs recall (bench/results/findings-2026-11-27.md).

    >>> from seal.editor.generation import chat_prompt, generate_completions
    >>> prompt = chat_prompt(tokenizer, "What is the capital of France?")  # doctest: +SKIP
    >>> generate_completions(model, tokenizer, [prompt], max_new_tokens=16)  # doctest: +SKIP
    ['The capital of France is Paris.']
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, user: str, *, system: str | None = None) -> str:
    """The text that asks ``user`` and leaves the model at the start of its reply.

    Falls back to ``"User: …\\nAssistant:"`` for tokenizers without a chat template.

        >>> chat_prompt(tokenizer, "Name a prime number.")  # doctest: +SKIP
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

        >>> chat_example(tokenizer, "Capital of France?", "Paris.")  # doctest: +SKIP
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


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
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
    share_prefix: bool = True,
    on_step: Callable[[float], None] | None = None,
    lanes: int = 1,
) -> list[str]:
    """Decode continuations of already formatted ``prompts`` in batched ``generate`` calls.

    Returns ``len(prompts) * num_return_sequences`` strings, grouped by prompt. Sampling with a
    seed is reproducible on one device; top-k is disabled so only ``top_p`` truncates (as in
    vLLM, which SEAL used).

    With ``share_prefix`` the tokens every row starts with (the chat template's system turn, or
    the whole prompt when K samples continue one prompt) go through the model once; the rows
    continue from that one cache, laid out as ``prefix, padding, own tokens`` with the padding
    masked, so every token keeps its position and the output is what a plain left-padded call
    gives (the tests pin it). Without it, every row is left-padded and prefilled in full.
    ``on_step(share)`` is called once per generated token position of each call, with the call's
    share of the rows (for progress bars: a full pass over every row adds up to 1 per position).

    ``lanes=K`` (greedy only) serves K adapters attached with
    :func:`seal.editor.multi_lora.lanes_attached`: every call holds each row once per adapter,
    adapter-major, and the answers come back adapter-major (K times ``len(prompts)``).

        >>> generate_completions(model, tok, [p], max_new_tokens=64, do_sample=True,  # doctest: +SKIP
        ...                      temperature=0.7, num_return_sequences=4, seed=0)  # doctest: +SKIP
        ['…', '…', '…', '…']
    """
    if not prompts:
        return []
    if do_sample and temperature <= 0:
        do_sample = False  # temperature 0 means greedy, as in vLLM/OpenAI
    add_special = not has_chat_template(tokenizer)
    # Rows are expanded here exactly as generate() would expand them (each prompt K times in a
    # row), so the random draws of a sampled call are the same whichever layout is used.
    rows = [ids for p in prompts
            for ids in [tokenizer(p, add_special_tokens=add_special)["input_ids"]] * num_return_sequences]
    config = _generation_config(model, tokenizer, max_new_tokens, do_sample, temperature, top_p)
    if lanes > 1 and (do_sample or num_return_sequences != 1 or batch_size is not None):
        raise ValueError("lanes serve greedy calls without a batch size only")
    if share_prefix and not do_sample and batch_size is None:
        # Greedy rows do not depend on their neighbours: group them by length so that little
        # of each call is padding. (Sampled rows keep their order: it fixes the random draws.)
        groups = length_groups(rows, max_new_tokens)
    else:
        step = batch_size or len(rows)
        groups = [list(range(start, min(start + step, len(rows)))) for start in range(0, len(rows), step)]
    outputs: list[str] = [""] * (len(rows) * lanes)
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        with seeded(seed, device), torch.inference_mode():
            for group in groups:
                share = len(group) / len(rows)
                tick = None if on_step is None else (lambda share=share: on_step(share))
                new = _generate_rows(model, [rows[i] for i in group] * lanes, config, config.pad_token_id,
                                     share_prefix=share_prefix, on_step=tick, lanes=lanes)
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                for lane in range(lanes):
                    for i, text in zip(group, texts[lane * len(group):(lane + 1) * len(group)]):
                        outputs[lane * len(rows) + i] = text.strip()
    finally:
        model.train(was_training)
    return outputs


def length_groups(rows: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
    """Row indices in calls of similar length, minimising padded tokens plus a cost per call.

    A call costs its rows times its longest row (the padding is computed too), plus about eight
    tokens' worth of fixed work per generated position (on a CPU a decode step of a few rows
    costs what a few extra tokens do) and the shared prefix once.

        >>> length_groups([[1] * 10, [1] * 30, [1] * 11, [1] * 29], 1)
        [[0, 2], [3, 1]]
        >>> length_groups([[1] * 10, [1] * 30, [1] * 11, [1] * 29], 16)   # more steps: one call
        [[0, 2, 3, 1]]
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    lengths = [len(rows[i]) for i in order]
    shared = shared_prefix_length(rows) if len(rows) > 1 else 0
    per_call = 8 * new_tokens + shared
    best = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * (lengths[j - 1] - shared) + per_call
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _generation_config(model: Any, tokenizer: Any, max_new_tokens: int, do_sample: bool, temperature: float,
                       top_p: float) -> Any:
    from transformers import GenerationConfig

    eos = eos_ids(model, tokenizer)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "num_return_sequences": 1,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        "eos_token_id": eos,
    }
    if do_sample:
        kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
    return GenerationConfig(**kwargs)


# Below this many shared tokens a separate prefix pass costs more than it saves.
MIN_SHARED_PREFIX = 4


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all rows share, leaving every row at least one token of its own.

        >>> shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
        2
    """
    shortest = min(len(r) for r in rows)
    first = rows[0]
    for i in range(shortest - 1):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(shortest - 1, 0)


def cache_keyword(model: Any) -> str:
    """The name generate() and forward() use for the KV cache (``cache`` from transformers 5.2x on)."""
    import inspect

    # A PeftModel's forward takes **kwargs; the base model's signature names the keyword.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _generate_rows(model: Any, rows: list[list[int]], config: Any, pad_id: int, *, share_prefix: bool,
                   on_step: Callable[[], None] | None, lanes: int = 1) -> torch.Tensor:
    """The new tokens of one batch of token rows (already expanded, one row per output; with
    ``lanes``, adapter-major groups whose shared prefix goes through each adapter once)."""
    device = model_device(model)
    kwargs: dict[str, Any] = {"generation_config": config}
    if on_step is not None:
        kwargs["stopping_criteria"] = _step_callbacks(on_step)
    shared = shared_prefix_length(rows) if share_prefix and len(rows) > lanes else 0
    if shared >= MIN_SHARED_PREFIX:
        width = max(len(r) for r in rows) - shared
        ids = [r[:shared] + [pad_id] * (shared + width - len(r)) + r[shared:] for r in rows]
        mask = [[1] * shared + [0] * (shared + width - len(r)) + [1] * (len(r) - shared) for r in rows]
        key = cache_keyword(model)
        prefix = model(input_ids=torch.tensor([rows[0][:shared]] * lanes, device=device), use_cache=True)
        cache = prefix[key] if key in prefix else prefix.past_key_values
        cache.batch_repeat_interleave(len(rows) // lanes)
        kwargs[key] = cache
    else:
        width = max(len(r) for r in rows)
        ids = [[pad_id] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    input_ids = torch.tensor(ids, device=device)
    out = model.generate(input_ids=input_ids, attention_mask=torch.tensor(mask, device=device), **kwargs)
    return out[:, input_ids.shape[1]:]


def _step_callbacks(on_step: Callable[[], None]) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Tick(StoppingCriteria):
        # Called once per generated position; never stops anything.
        def __call__(self, input_ids, scores, **kwargs):
            on_step()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Tick()])


@dataclass(frozen=True)
class Ask:
    """One greedy question to a model: a formatted prompt and how many tokens its answer may take."""

    prompt: str
    max_new_tokens: int


def answer_asks(model: Any, tokenizer: Any, asks: Sequence[Ask], *, share_prefix: bool = True,
                max_rows: int | None = None, on_step: Callable[[float], None] | None = None,
                lanes: int = 1) -> list[str]:
    """Greedy answers to every ask in as few ``generate`` calls as there are answer lengths.

    Asks of one length share a call (one call for 91 probe prompts instead of six); asks of
    different lengths do not, so no row decodes more tokens than it is allowed. Answers come
    back in the asks' order (adapter-major with ``lanes``, see :func:`generate_completions`).
    ``max_rows`` caps a call's batch (memory).

        >>> answer_asks(model, tok, [Ask(p1, 16), Ask(p2, 48), Ask(p3, 16)])  # doctest: +SKIP
        ['…', '…', '…']
    """
    answers: list[str] = [""] * (len(asks) * lanes)
    by_length: dict[int, list[int]] = {}
    for i, ask in enumerate(asks):
        by_length.setdefault(ask.max_new_tokens, []).append(i)
    for length, indices in by_length.items():
        texts = generate_completions(model, tokenizer, [asks[i].prompt for i in indices], max_new_tokens=length,
                                     batch_size=max_rows, share_prefix=share_prefix, on_step=on_step, lanes=lanes)
        for lane in range(lanes):
            for i, text in zip(indices, texts[lane * len(indices):(lane + 1) * len(indices)]):
                answers[lane * len(asks) + i] = text
    return answers
