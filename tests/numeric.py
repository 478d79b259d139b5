"""Tolerances derived from floating-point rounding, for comparisons of two ways to compute one thing.

Two computations of the same sums in a different order (batched against one by one, a merged
weight against an adapter added on the side) differ by re-association. A sum of n float terms,
in any order, is off by at most about n * eps times the sum of the terms' sizes, and here that
size is bounded by the largest value of the result. So the bound is relative to the tensor's
largest magnitude, never per element: an element near zero has no relative accuracy to promise.

    >>> assert_close_to_scale(torch.ones(3), torch.ones(3), terms=10)   # doctest: +SKIP
"""

from __future__ import annotations


def rounding_bound(want, *, terms: int) -> float:
    """The largest difference rounding can explain: terms * eps(dtype) * max|want|."""
    import torch

    return terms * torch.finfo(want.dtype).eps * float(want.abs().max())


def assert_close_to_scale(got, want, *, terms: int) -> None:
    """Fail unless every element of got is within rounding_bound(want, terms=terms) of want."""
    assert got.shape == want.shape, (got.shape, want.shape)
    worst = float((got.to(want.dtype) - want).abs().max())
    bound = rounding_bound(want, terms=terms)
    assert worst <= bound, f"max |got - want| = {worst:.3g} exceeds {terms} * eps * max|want| = {bound:.3g}"


def forward_terms(config, *, softmax: bool = False) -> int:
    """The longest chain of rounded sums in one forward pass of a decoder: per layer an attention
    and an MLP reduction (hidden, then intermediate wide), the head's reduction over hidden, and
    with ``softmax`` the log-sum-exp over the vocabulary."""
    per_layer = config.hidden_size + config.intermediate_size
    return config.num_hidden_layers * per_layer + config.hidden_size + (config.vocab_size if softmax else 0)


def margin_bound(model, tokenizer, questions, margins) -> float:
    """The largest difference rounding can explain in one answer margin (seal.editor.efficacy):
    each option's score sums its tokens' log-probabilities, each off by one forward pass's
    rounding, and a margin subtracts the rivals' sum from the gold one."""
    import torch

    tokens = max(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for q in questions for o in q.options)
    terms = 2 * tokens * forward_terms(model.config, softmax=True)
    return terms * torch.finfo(torch.float32).eps * max(abs(m) for m in margins)
