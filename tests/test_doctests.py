"""Every docstring example in seal's modules runs, imported under its real name (``seal.…``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import seal.cli
import seal.editor
import seal.registry
import seal.ui


def _modules() -> list[str]:
    names = []
    for pkg in (seal.registry, seal.editor, seal.cli, seal.ui):  # sub-packages too (seal.registry.hub, ...)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".") if not m.name.endswith("__main__")]
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("*.py") if ">>>" in p.read_text(encoding="utf-8")))
def test_bench_docstring_examples_run(script, monkeypatch):
    """The benches' summaries (fronts, intervals, tables) are checked by their examples too."""
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module(script)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in bench/{script}.py failed"
