"""seal's registry: the lineage store of LoRA versions, refs, blobs, signatures and audits.

The public API is :class:`Registry` (``from seal.registry import Registry``); it is imported
lazily so that ``import seal.registry.store.refs`` and friends stay cheap.
"""

from __future__ import annotations

__all__ = ["Registry"]


def __getattr__(name: str):
    if name == "Registry":
        from .repo import Registry

        return Registry
    raise AttributeError(name)
