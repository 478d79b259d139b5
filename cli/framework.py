"""What every command module shares: the ``command`` marker, ``doc``, the shared options, and the
state of one run (the ``--repo`` given, the registries opened). It imports no command module, so
the command modules and app.py (which registers them) form no circle.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import typer

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")
RepoOpt = typer.Option(None, "--repo", help="The registry folder (default: SEAL_DIR, or walk up from here).")


@dataclass
class State:
    """One run's state: the registry folder named by ``--repo``, and the registries to close."""

    repo_path: Optional[Path] = None
    opened: list = field(default_factory=list)


state = State()


@dataclass(frozen=True)
class CommandSpec:
    name: str
    help: str


def command(name: str | None = None, *, help: str) -> Callable:
    """Mark ``fn`` as the command ``name`` (default: its name, ``db_current`` → ``db-current``) with
    ``help``; app.py registers it. The function gains ``--repo``, so it works before or after the
    command name."""

    def deco(fn: Callable) -> Callable:
        wrapped = _with_repo(fn)
        wrapped.seal_command = CommandSpec(name or fn.__name__.rstrip("_").replace("_", "-"), help)
        return wrapped

    return deco


def _with_repo(fn: Callable) -> Callable:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    params.append(inspect.Parameter("repo_path", inspect.Parameter.KEYWORD_ONLY, default=RepoOpt,
                                    annotation=Optional[Path]))

    @functools.wraps(fn)
    def wrapper(*args, repo_path: Optional[Path] = None, **kw):
        if repo_path is not None:
            state.repo_path = repo_path
        return fn(*args, **kw)

    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), "repo_path": Optional[Path]}
    return wrapper


def doc(text: str, *examples: str) -> str:
    """A command's help: its description, then examples (kept as written, not re-wrapped)."""
    return text + "\n\n\b\nExample" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)


def open_registry():
    """The registry this run works on (``--repo``, SEAL_DIR, or found by walking up); closed at the end."""
    from seal.registry.repo import Registry

    reg = Registry.open(state.repo_path)
    state.opened.append(reg)
    return reg


def close_registries() -> None:
    while state.opened:
        try:
            state.opened.pop().close()
        except Exception:
            pass


def reset_state() -> None:
    state.repo_path = None
