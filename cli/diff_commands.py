"""`seal diff` and `seal revert`: parse, call the registry, render. No model is loaded (but `--behavior`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .framework import JsonOpt, command, doc, open_registry
from .diff_render import diff_lines, stat_lines
from .render import emit, print_json, short


@command(help=doc(
    "What NEW changed relative to OLD, as in git: a summary first (modules changed, total ‖ΔW‖, score "
    "differences, gates whose verdict changed), then weights per module, adapter config, base, scores, gates "
    "and the data of the versions between. With one revision, REV relative to its first parent. Every "
    "difference is NEW − OLD; ‖ΔW‖ figures are Frobenius norms of the LoRA updates (PEFT scaling), from "
    "r×r products. --json prints one document (schemas/diff.schema.json); --stat only the per-module summary.",
    "seal diff HEAD~2 HEAD", "seal diff HEAD --stat", "seal diff main experiment --json",
))
def diff(
    old: str = typer.Argument(..., metavar="OLD", help="The version to compare from; given alone, the version REV to compare with its first parent."),
    new: Optional[str] = typer.Argument(None, metavar="[NEW]", help="The version to show relative to OLD."),
    json_: bool = JsonOpt,
    stat: bool = typer.Option(False, "--stat", help="Only the per-module summary, like `git diff --stat` (text; --json prints the whole document)."),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when OLD and NEW differ, 0 when not."),
    all_: bool = typer.Option(False, "--all", help="Show unchanged modules, config fields, scores, gates and versions too."),
    behavior: Optional[Path] = typer.Option(None, "--behavior", help="Prompts file (lines or JSONL {prompt}): greedy outputs of OLD and NEW side by side (loads the model)."),
) -> None:
    from seal.registry.diff import diff_revision, diff_versions

    reg = open_registry()
    if behavior is not None:
        from seal.editor.behavior import add_behavior, read_prompts

        prompts = read_prompts(behavior)  # checked before anything is computed
    if new is None:
        report = diff_revision(reg, old, include_all=all_)
    else:
        report = diff_versions(reg, old, new, include_all=all_)
    if behavior is not None:
        add_behavior(reg, report, prompts, include_all=all_)
    if json_:
        print_json(report)
    elif stat:
        emit(stat_lines(report))
    elif report["differs"] or all_:
        emit(diff_lines(report))
    if exit_code and report["differs"]:
        raise typer.Exit(1)


@command(help=doc(
    "Undo a version: a new version on the current branch with the adapter from before it, carrying the scores "
    "of the state it restores (and where they were measured). History is never rewritten: the reverted "
    "version stays, and the new one records what it undid and why.",
    "seal revert HEAD -m 'regressed on retention'", "seal revert HEAD~2 --to HEAD~4",
))
def revert(
    rev: str = typer.Argument(..., help="The version to undo (an ancestor of HEAD)."),
    to: Optional[str] = typer.Option(None, "--to", help="Go back to this ancestor of REV instead of REV's first parent."),
    message: str = typer.Option("", "-m", "--message", help="Why (kept in the message, the record and the reflog)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.porcelain import revert as do_revert

    out = do_revert(open_registry(), rev, to=to, message=message)
    if json_:
        print_json(out)
        return
    restored = f"adapter {out['adapter']}" if out["adapter"] else "no adapter (the bare base model)"
    emit([
        f"[{out['ref']} {short(out['id'])}] {out['message']}",
        f"restored {restored} from {short(out['to'])}",
    ])
