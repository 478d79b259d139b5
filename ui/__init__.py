"""`seal ui`: a read-only web app over a registry, for engineers and for reviewers.

Pages: the lineage (a paged DAG with filters), a version (trigger, self-edit and its writer,
training loss, scores, every gate with its interval, signature, ref moves, parent diff), compare
(`seal diff OLD NEW`), drift over a branch, and the audit report with downloads. It reads
through :class:`seal.registry.Registry` only, opened read-only, and imports no model library.

>>> from seal.registry import Registry                                     # doctest: +SKIP
>>> from seal.ui import create_app                                          # doctest: +SKIP
>>> app = create_app(Registry.open(".", read_only=True))                    # doctest: +SKIP
"""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(reg, **kwargs):
    """The Starlette app over ``reg``; see :func:`seal.ui.app.create_app`."""
    from .app import create_app as build

    return build(reg, **kwargs)
