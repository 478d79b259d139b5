"""The storage boundary the README promises: editor/ talks to the lineage store through the
registry's API (``Registry`` and the modules listed here), never through its SQL layer, its
schema, its stores or a private name. What is not there yet is listed by name, so that a new
crossing fails here instead of slipping in."""

from __future__ import annotations

import ast
import re
from pathlib import Path

EDITOR = Path(__file__).resolve().parent.parent / "editor"
REGISTRY = EDITOR.parent / "registry"

# The registry's API as editor/ uses it: the Registry object, the record format (objects,
# adapters, errors, refs' names), and the porcelain a writer shares (policy, scan, tracking, ...).
# Modules of a sub-package are named from seal.registry down (store.objects is seal.registry.store.objects).
API = {"repo", "errors", "store.objects", "adapters", "store.refs", "porcelain", "policy", "bases", "scan", "files",
       "tracking", "worktree"}
# What editor/ reads besides: the score and gate names, the registry's XSTest configuration, and the
# LoRA arithmetic diff shares. (The gate statistics and the ReST-EM dataset live in editor/.)
EVALUATION = {"xstest", "vocabulary", "lora_math"}
# Connection-level helpers, allowed only where one read transaction must see one state:
# merge resolves its inputs, HEAD and their manifests together.
IN_ONE_TRANSACTION = {("store.graph", "merge"), ("store.revisions", "merge"), ("store.versions", "merge")}
NEVER = {"store.sql", "store.schema", "store.db", "store.object_store", "store.s3_store", "store_url", "config", "init",
         "gc", "verify"}
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\s+\S+.*\b(FROM|INTO|SET|WHERE)\b", re.S)


def _registry_imports():
    """(editor module, registry module, imported name) for every import of seal.registry; the module
    is dotted below seal.registry, and ``from seal.registry.store import refs`` imports store.refs."""
    for path in sorted(EDITOR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seal.registry"):
                module = node.module.removeprefix("seal.registry").lstrip(".")
                for alias in node.names:
                    if module and (REGISTRY / module.replace(".", "/") / f"{alias.name}.py").is_file():
                        yield path.stem, f"{module}.{alias.name}", alias.name
                    else:
                        yield path.stem, module or alias.name, alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("seal.registry."):
                        yield path.stem, alias.name.removeprefix("seal.registry."), ""


def test_editor_imports_only_the_registry_api():
    crossings = sorted({(module, importer) for importer, module, _ in _registry_imports()
                        if module not in API | EVALUATION and (module, importer) not in IN_ONE_TRANSACTION})
    assert crossings == [], f"editor/ reaches past the registry API: {crossings}"
    assert not NEVER & {module for _, module, _ in _registry_imports()}


def test_editor_imports_no_private_registry_name():
    private = sorted({(importer, f"{module}.{name}") for importer, module, name in _registry_imports()
                      if name.startswith("_")})
    assert private == []


def test_editor_runs_no_sql_and_opens_transactions_only_where_listed():
    for path in sorted(EDITOR.glob("*.py")):
        strings = [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)]
        assert not [s for s in strings if SQL.search(s)], f"{path.name} writes SQL"
        opens = re.findall(r"\b(?:reg|repo)\.(?:read|write)\(\)", path.read_text())
        assert not opens or path.stem == "merge", f"{path.name} opens a transaction: use a Registry method"


def test_the_allow_list_is_not_stale():
    used = {(module, importer) for importer, module, _ in _registry_imports()}
    assert IN_ONE_TRANSACTION <= used, IN_ONE_TRANSACTION - used


def test_every_command_is_in_the_table_of_contents():
    """A command module only marks functions; cli/app.py's COMMANDS registers them, each once."""
    import inspect

    from seal.cli import app

    marked = {fn for module in (app.diff_commands, app.edit_commands, app.hub_commands, app.learn_commands,
                                app.registry_commands, app.team_commands, app.ui_commands)
              for _, fn in inspect.getmembers(module, callable) if hasattr(fn, "seal_command")
              and fn.__module__ == module.__name__}
    listed = [fn for _, fn in app.COMMANDS]
    assert len(listed) == len(set(listed)) and set(listed) == marked
    names = [(group, fn.seal_command.name) for group, fn in app.COMMANDS]
    assert len(names) == len(set(names))


def _relative_imports(path: Path) -> set[tuple[str, str]]:
    """(module, name) of every ``from .module import name`` in one editor module."""
    return {(node.module, alias.name) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module for alias in node.names}


def test_every_attempt_runs_through_the_one_pipeline():
    """editor/attempt.py is the one place that opens an attempt, records it and ends its MLflow runs
    when it fails; loop, merge, gated_import, learn and cluster call it (review 2026-12-07 §6.1)."""
    pipeline = {("record", "record"), ("record", "record_refusal"), ("stages", "decide"), ("stages", "outrank")}
    for path in sorted(EDITOR.glob("*.py")):
        if path.stem != "attempt":
            assert not pipeline & _relative_imports(path), f"{path.name} runs a step of the attempt pipeline itself"
        guards = path.read_text().count("kill_open_runs()")
        # the session's close and the Ray driver's command end what is left open, as a last resort
        assert guards == (1 if path.stem in ("attempt", "session", "cluster") else 0), path.name
    for user in ("loop", "merge", "gated_import", "learn", "cluster"):
        assert any(module == "attempt" for module, _ in _relative_imports(EDITOR / f"{user}.py")), user


def test_the_hub_packages_lazy_names_are_spelled_out_for_static_readers():
    """registry/hub/__init__.py loads its names on first use from a table (``_WHERE``); its
    ``TYPE_CHECKING`` block imports the same names from the same modules, so type checkers and
    import graphs see every edge (the pattern and check of huggingface_hub's ``__init__``)."""
    import seal.registry.hub as hub

    tree = ast.parse((REGISTRY / "hub" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    spelled = {alias.name: "." * node.level + (node.module or "") for node in block.body
               if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert spelled == hub._WHERE
    assert all(getattr(hub, name) is not None for name in spelled)  # each loads from where it is said to be
