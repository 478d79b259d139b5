"""The `seal` command line: parse, call the library, render. Nothing else lives here.

Commands that need no model import neither torch nor transformers, peft or mlflow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .render import emit, log_line, print_json, short, when

app = typer.Typer(
    name="seal",
    help="A versioned registry for the LoRA state of language models, and the SEAL self-edit loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The lineage database's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")


class State:
    repo_path: Optional[Path] = None


state = State()


@app.callback()
def _global(
    repo: Optional[Path] = typer.Option(None, "--repo", help="The registry folder (default: SEAL_DIR, or walk up from here)."),
) -> None:
    state.repo_path = repo


def _repo():
    from seal.registry.repository import Repository

    return Repository.find(state.repo_path)


def _err(message: str) -> None:
    sys.stderr.write(message + "\n")


# --- init / import ----------------------------------------------------------------------------

@app.command()
def init(
    path: Path = typer.Argument(Path("."), help="Where to create .seal/ (default: here)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: a folder, a .gguf file or a Hub id (default: the embedded SmolLM2-135M-Instruct)."),
    db: Optional[str] = typer.Option(None, "--db", help="Database URL (default: sqlite:///.seal/lineage.db)."),
    json_: bool = JsonOpt,
) -> None:
    """Create a registry: PATH/.seal with its database, signing key and the base's root version."""
    from seal.registry.porcelain import check_can_init, init_registry

    from .bases import describe_base

    check_can_init(Path(path))
    record = describe_base(base)
    repo = init_registry(Path(path), base=record, db_url=db)
    out = {"path": str(repo.seal_dir), "base": {"id": record["id"], "name": record["name"]}}
    if json_:
        print_json(out)
    else:
        emit([f"Initialised seal registry in {repo.seal_dir} on base {record['name']} ({short(record['id'])})"])


@app.command("import")
def import_(
    adapter_dir: Path = typer.Argument(..., help="A PEFT LoRA folder: adapter_config.json + adapter_model.safetensors."),
    message: str = typer.Option("", "-m", "--message", help="Why this version exists."),
    parent: Optional[str] = typer.Option(None, "--parent", help="The parent revision (default: HEAD)."),
    json_: bool = JsonOpt,
) -> None:
    """Record an existing PEFT LoRA adapter folder as a version on the current branch."""
    from seal.registry.porcelain import import_adapter

    out = import_adapter(_repo(), adapter_dir, message=message, parent=parent)
    if json_:
        print_json(out)
    else:
        emit([f"[{out['ref']} {short(out['id'])}] {message or 'import ' + adapter_dir.name}"])


# --- log / show -------------------------------------------------------------------------------

@app.command()
def log(
    rev: Optional[str] = typer.Argument(None, help="Start here (default: HEAD)."),
    n: Optional[int] = typer.Option(None, "-n", help="Show at most N versions."),
    all_: bool = typer.Option(False, "--all", help="Every version, rejected and unreachable ones too."),
    graph: bool = typer.Option(False, "--graph", help="Draw the lineage like `git log --graph`."),
    json_: bool = JsonOpt,
) -> None:
    """The lineage, newest first: id, refs, kind, status, time, headline score, message."""
    from seal.registry.porcelain import graph_lines, log as log_versions

    items = log_versions(_repo(), rev, n=n, all_versions=all_)
    if json_:
        print_json(items)
        return
    if graph:
        emit([log_line(item, prefix + " ") if item else prefix for prefix, item in graph_lines(items)])
    else:
        emit([log_line(item) for item in items])


@app.command()
def show(
    rev: str = typer.Argument("HEAD", help="The version to show."),
    json_: bool = JsonOpt,
) -> None:
    """The whole record of one version."""
    from seal.registry.porcelain import show as show_version

    record = show_version(_repo(), rev)
    if json_:
        print_json(record)
        return
    emit(_show_lines(record))


def _show_lines(r: dict) -> list[str]:
    lines = [
        f"version   {r['id']}" + (f"  ({', '.join(r['refs'])})" if r.get("refs") else ""),
        f"kind      {r['kind']}    status {r['status']}",
        f"parents   {', '.join(p for p in r['parents']) or '(none: root)'}",
        f"base      {r['base']}",
        f"author    {r.get('author') or '-'}",
        f"date      {when(r['created_at'])}",
        f"signed    {short(r.get('signer'))}" if r.get("signature") else "signed    NO",
        "",
        f"    {r.get('message', '')}",
        "",
    ]
    adapter = r.get("adapter")
    if adapter:
        cfg = adapter.get("config", {})
        lines.append(
            f"adapter   {adapter['weights']}  r={cfg.get('r')} alpha={cfg.get('lora_alpha')} "
            f"targets={cfg.get('target_modules')}"
        )
    for key in ("trigger", "self_edit", "policy"):
        if r.get(key):
            lines.append(f"{key:<9} {r[key]}")
    train = r.get("train") or {}
    if train:
        keys = [k for k in ("source", "device", "gpu", "epochs", "lr", "steps", "final_loss", "seconds", "mlflow_run_id") if k in train]
        lines.append("train     " + "  ".join(f"{k}={train[k]}" for k in keys))
        if "mlflow_run_id" in train or r.get("mlflow_run_id"):
            lines.append(f"mlflow    run {train.get('mlflow_run_id') or r.get('mlflow_run_id')}")
    if r.get("scores"):
        lines.append("scores")
        for s in r["scores"]:
            against = f" vs {s['against']}" if s.get("against") else ""
            n = f" (n={s['n']})" if s.get("n") is not None else ""
            lines.append(f"  {s['suite']}.{s['metric']}{against} = {s['value']:.4f}{n}")
    if r.get("audit"):
        lines.append("gates")
        for a in r["audit"]:
            verdict = "pass" if a["passed"] else "FAIL"
            thr = "" if a.get("threshold") is None else f" (threshold {a['threshold']})"
            val = "" if a.get("value") is None else f" {a['value']:.4f}"
            lines.append(f"  {verdict}  {a['check']}{val}{thr}  {a.get('detail', '')}".rstrip())
    if r.get("decision"):
        lines.append(f"decision  {r['decision']}")
    return lines


# --- checkout / branch / tag ------------------------------------------------------------------

@app.command()
def checkout(
    rev: str = typer.Argument(..., help="A version: id, prefix, branch, tag, HEAD~N, REV^N."),
    b: Optional[str] = typer.Option(None, "-b", help="Create branch NAME at REV and follow it."),
    to: Optional[Path] = typer.Option(None, "--to", help="Only write the adapter folder to DIR; HEAD stays."),
    force: bool = typer.Option(False, "--force", help="Replace a folder with local changes."),
    json_: bool = JsonOpt,
) -> None:
    """Move HEAD to a version and write its adapter as a folder PEFT loads."""
    from seal.registry.porcelain import checkout as do_checkout

    out = do_checkout(_repo(), rev, branch=b, to=to, force=force)
    if json_:
        print_json(out)
        return
    lines = []
    if out.get("head"):
        where = f"detached HEAD at {short(out['id'])}" if out.get("detached") else f"branch {out['head']} ({short(out['id'])})"
        lines.append(f"HEAD is now {where}")
    if out.get("path"):
        lines.append(f"adapter {short(out['id'])} written to {out['path']}")
    emit(lines)


@app.command()
def branch(
    name: Optional[str] = typer.Argument(None, help="Create this branch."),
    rev: str = typer.Argument("HEAD", help="Where the new branch starts."),
    delete: Optional[str] = typer.Option(None, "-d", "--delete", help="Delete branch NAME (the version stays)."),
    json_: bool = JsonOpt,
) -> None:
    """List, create or delete branches."""
    from seal.registry import porcelain as P

    repo = _repo()
    if delete:
        out = P.delete_branch(repo, delete)
        print_json(out) if json_ else emit([f"Deleted branch {delete} (was {short(out['id'])})"])
    elif name:
        out = P.create_branch(repo, name, rev)
        print_json(out) if json_ else emit([f"Created branch {name} at {short(out['id'])}"])
    else:
        items = P.list_branches(repo)
        print_json(items) if json_ else emit([f"{'*' if b['current'] else ' '} {b['name']:<20} {short(b['id'])}" for b in items])


@app.command()
def tag(
    name: Optional[str] = typer.Argument(None, help="Create this tag."),
    rev: str = typer.Argument("HEAD", help="The version to tag."),
    json_: bool = JsonOpt,
) -> None:
    """List tags, or tag a version. Tags never move."""
    from seal.registry import porcelain as P

    repo = _repo()
    if name:
        out = P.create_tag(repo, name, rev)
        print_json(out) if json_ else emit([f"Tagged {short(out['id'])} as {name}"])
    else:
        items = P.list_tags(repo)
        print_json(items) if json_ else emit([f"{t['name']:<20} {short(t['id'])}" for t in items])


@app.command()
def reflog(
    ref: Optional[str] = typer.Argument(None, help="Only this ref (HEAD, a branch or tag)."),
    n: Optional[int] = typer.Option(None, "-n"),
    json_: bool = JsonOpt,
) -> None:
    """Who moved which ref, when, from what to what, and why."""
    from seal.registry.porcelain import reflog_entries

    items = reflog_entries(_repo(), ref, n)
    if json_:
        print_json(items)
        return
    emit([
        f"{when(e['time'])}  {e['ref']:<22} {short(e['old'])} -> {short(e['new'])}  {e['actor']}  {e['reason']}"
        for e in items
    ])


# --- audit ------------------------------------------------------------------------------------

@app.command()
def audit(
    rev: str = typer.Argument("HEAD", help="The version to account for."),
    fmt: str = typer.Option("md", "--format", help="md | json | html."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the report to FILE (default: stdout)."),
    drift: bool = typer.Option(False, "--drift", help="Only the drift table of the first-parent line, one line per version."),
    json_: bool = JsonOpt,
) -> None:
    """The compliance report: what changed the model, when, on what data, was it checked, who moved it."""
    from seal.registry.audit import audit_report, render
    from seal.registry.errors import UserError

    if fmt not in ("md", "json", "html"):
        raise UserError(f"unknown --format {fmt!r}; use md, json or html")
    report = audit_report(_repo(), rev)
    if drift:
        if json_:
            print_json(report["drift"])
            return

        def f(x):
            return "-" if x is None else f"{x:.4f}"

        emit([f"{'version':<12}  {'kind':<11} {'status':<8} {'KL base':>8} {'JS base':>8} {'retention':>9} {'|dW| base':>9}"] + [
            f"{d['id'][:12]}  {d['kind']:<11} {d['status']:<8} {f(d['kl_base']):>8} {f(d['js_base']):>8} "
            f"{f(d['retention']):>9} {f(d['delta_norm_base']):>9}" for d in report["drift"]
        ])
        return
    text = render(report, "json" if json_ else fmt)
    if output is None:
        sys.stdout.write(text)
        return
    output = Path(output)
    if output.parent and not output.parent.exists():
        raise UserError(f"folder {output.parent} does not exist; create it or choose another -o")
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text)
    tmp.replace(output)
    emit([f"audit of {report['subject'][:12]} written to {output} ({fmt})"])


# --- verify / db ------------------------------------------------------------------------------

@app.command()
def verify(json_: bool = JsonOpt) -> None:
    """Recompute every blob digest, manifest id, parent edge and signature. Exit 1 on any fault."""
    from seal.registry.verify import verify_registry

    faults = verify_registry(_repo())
    if json_:
        print_json({"ok": not faults, "faults": faults})
    elif faults:
        emit([f"FAULT {short(f['version']) if f['version'] else '-':<12} {f['object']}: {f['fault']}" for f in faults])
    else:
        emit(["verify: ok (every blob, manifest, parent edge and signature checks out)"])
    if faults:
        raise typer.Exit(1)


def _db_url() -> str:
    if os.environ.get("SEAL_DATABASE_URL"):
        return os.environ["SEAL_DATABASE_URL"]
    return _repo().database_url


@db_app.command("current")
def db_current(json_: bool = JsonOpt) -> None:
    """The schema revision of the lineage database, and the newest this seal knows."""
    from seal.registry.porcelain import db_current as current

    out = current(_db_url())
    print_json(out) if json_ else emit([f"current {out['current']}  head {out['head']}  {'up to date' if out['up_to_date'] else 'run `seal db upgrade`'}"])


@db_app.command("upgrade")
def db_upgrade(json_: bool = JsonOpt) -> None:
    """Upgrade the lineage database's schema to the newest revision."""
    from seal.registry.porcelain import db_upgrade as upgrade

    out = upgrade(_db_url())
    print_json(out) if json_ else emit([f"schema at {out['current']}"])


# Command groups that live in their own modules register themselves on `app` when imported.
# Keep these modules light: no torch, transformers, peft or mlflow at module level.
# (one import line per module, below this comment)
from . import edit_commands  # noqa: E402,F401
from . import hub_commands  # noqa: E402,F401
from . import diff_commands  # noqa: E402,F401


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: user errors become one line on stderr and exit 2, never a traceback."""
    from seal.registry.errors import SealError

    try:
        # Without standalone mode click returns typer.Exit's code instead of raising it.
        rc = app(args=argv, standalone_mode=False, prog_name="seal")
    except SealError as e:
        _err(f"seal: error: {e}")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _err("seal: aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        _err("seal: interrupted; nothing half-written was kept")
        sys.exit(130)
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)

