"""Commands that need no model: parse options, call seal.registry, render. Nothing else lives here."""

import sys
from pathlib import Path
from typing import Optional

import typer

from .framework import JsonOpt, command, doc, open_registry
from .render import decision_lines, emit, log_line, print_json, short, show_lines, when


# --- init / import ----------------------------------------------------------------------------

@command(help=doc("Create a registry: PATH/.seal with its database, signing key, trust file and the base's root version.",
                  "seal init", "seal init . --base ./my-model --db postgresql://me@db/seal",
                  "seal init --xstest ~/data/xstest_prompts.csv"))
def init(
    path: Path = typer.Argument(Path("."), help="Where to create .seal/ (default: here)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: a folder, a .gguf file or a Hub id in the local cache (default: the embedded SmolLM2-135M-Instruct)."),
    db: Optional[str] = typer.Option(None, "--db", help="Database URL (default: sqlite:///.seal/lineage.db)."),
    objects: Optional[str] = typer.Option(None, "--objects", help="Object store URL, e.g. s3://bucket/prefix (default: .seal/objects)."),
    xstest: Optional[Path] = typer.Option(None, "--xstest", help="The published XSTest xstest_prompts.csv (450 prompts): the safety gates use all of it, stored in the registry (default: seal's 50-prompt sample)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.init import check_can_init, init_registry
    from seal.registry.store.sql import Url
    from seal.registry.xstest import read_xstest_file, set_xstest

    check_can_init(path)
    if db is not None:
        Url.parse(db)
    xstest_data = read_xstest_file(xstest) if xstest is not None else None
    from seal.editor.base import base_record_for, check_base_spec
    from seal.editor.progress import default_progress
    from seal.editor.session import measure_base

    check_base_spec(base)
    progress = default_progress()
    reg = init_registry(path, base=lambda: base_record_for(base, progress), db_url=db, objects_url=objects)
    record = reg.base()
    out = {"path": str(reg.seal_dir), "base": {"id": record["id"], "name": record["name"]}, "signer": reg.signer.id}
    if xstest_data is not None:
        out["xstest"] = set_xstest(reg, xstest_data, reason="seal init --xstest")["new"]
    measure_base(reg, progress)  # the base's one-time work, here rather than in the first edit
    print_json(out) if json_ else emit([f"Initialised seal registry in {reg.seal_dir} on base {record['name']} ({short(record['id'])})"])


@command("import", help=doc("Record an existing PEFT LoRA adapter folder as a version on the current branch. It is "
                            "checked against the base (shapes, ranks, finite weights). Without --gate it is recorded "
                            "as ungated; with --gate it is scored against HEAD and gated like an edit "
                            "(exit 1 when a gate rejects it; it is recorded either way).",
                            "seal import ./my-adapter -m 'trained elsewhere'",
                            "seal import ./my-adapter --gate --eval qa.jsonl"))
def import_(
    adapter_dir: Path = typer.Argument(..., help="A PEFT LoRA folder: adapter_config.json + adapter_model.safetensors."),
    message: str = typer.Option("", "-m", "--message", help="Why this version exists."),
    parent: Optional[str] = typer.Option(None, "--parent", help="The parent revision (default: HEAD; must be the branch head)."),
    gate: bool = typer.Option(False, "--gate", help="Score the adapter against HEAD and apply the policy's gates (loads the model)."),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="With --gate: JSONL of {question, answer} to measure efficacy on (default: the eval sets of HEAD's line)."),
    device: str = typer.Option("auto", "--device", help="With --gate: auto | cpu | cuda | cuda:N | mps."),
    no_track: bool = typer.Option(False, "--no-track", help="With --gate: do not log an MLflow run."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.errors import UserError

    reg = open_registry()
    if not gate:
        if eval_file is not None or device != "auto" or no_track:
            raise UserError("--eval, --device and --no-track go with --gate; add --gate to score the adapter")
        from seal.registry.porcelain import import_adapter

        out = import_adapter(reg, adapter_dir, message=message, parent=parent)
        print_json(out) if json_ else emit([f"[{out['ref']} {short(out['id'])}] {message or 'import ' + adapter_dir.name} (ungated)"])
        return
    if parent is not None:
        raise UserError("--parent does not go with --gate: a gated import is compared with HEAD; check out the parent first")
    from seal.editor.gated_import import run_gated_import

    result = run_gated_import(reg, adapter_dir, message=message, eval_file=eval_file, device=device, track=not no_track)
    print_json(result) if json_ else emit(decision_lines(result))
    if not result["decision"]["accepted"]:
        raise typer.Exit(1)


@command(help=doc("The frozen base model this registry adapts: its name, fingerprint and where its weights are. "
                  "--path prints the folder (or Hub id) that loads it offline, which checked-out adapter folders name.",
                  "seal base", "python -c \"from peft import AutoPeftModelForCausalLM as M; M.from_pretrained('adapter')\""))
def base(
    path: bool = typer.Option(False, "--path", help="Print only what from_pretrained should be given to load the base here."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.loadable import base_path

    record = open_registry().base()
    out = {"id": record["id"], "name": record["name"], "revision": record.get("revision"), "source": record["source"],
           "location": record.get("location"), "path": base_path(record)}
    if path:
        sys.stdout.write(out["path"] + "\n")
    elif json_:
        print_json(out)
    else:
        emit([f"base      {out['name']}" + (f" @ {out['revision']}" if out["revision"] else ""),
              f"id        {out['id']}", f"source    {out['source']}", f"loads as  {out['path']}"])


# --- log / show / status ----------------------------------------------------------------------

@command(help=doc("The lineage, newest first: id, refs, kind, status, time, headline score, message.",
                  "seal log -n 10", "seal log --graph --all"))
def log(
    rev: Optional[str] = typer.Argument(None, help="Start here (default: HEAD)."),
    n: Optional[int] = typer.Option(None, "-n", "--max-count", min=0, help="Show at most N versions."),
    all_: bool = typer.Option(False, "--all", help="Every version, rejected and unreachable ones too."),
    graph: bool = typer.Option(False, "--graph", help="Draw the lineage like `git log --graph`."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.store.graph import graph_lines

    entries = [e.to_json() for e in open_registry().log(rev, n=n, all=all_)]
    if json_:
        print_json(entries)
    elif graph:
        emit([log_line(item, prefix + " ") if item else prefix for prefix, item in graph_lines(entries)])
    else:
        emit([log_line(item) for item in entries])


@command(help=doc("The whole record of one version: adapter, data, training, scores with their references, gates, decision.",
                  "seal show HEAD~1", "seal show v1 --json"))
def show(rev: str = typer.Argument("HEAD", help="The version to show."), json_: bool = JsonOpt) -> None:
    record = open_registry().show(rev)
    print_json(record) if json_ else emit(show_lines(record))


@command(help=doc("HEAD against the adapter folder ./adapter: clean, modified, stale, incomplete or missing.",
                  "seal status"))
def status(json_: bool = JsonOpt) -> None:
    from seal.registry.worktree import status as worktree_status

    out = worktree_status(open_registry())
    if json_:
        print_json(out)
        return
    where = f"On branch {out['head']}" if out["head"] != "HEAD" else f"HEAD detached at {short(out['id'])}"
    emit([f"{where} ({short(out['id'])})", f"adapter folder: {out['state']}: {out['detail']}"])


# --- checkout / branch / tag / alias ----------------------------------------------------------

@command(help=doc("Move HEAD to a version and write its adapter as a folder PEFT loads (./adapter). The folder is "
                  "complete before HEAD moves, and seal never deletes files it did not write.",
                  "seal checkout HEAD~1", "seal checkout -b experiment v1", "seal checkout v1 --to ./adapter-v1"))
def checkout(
    rev: Optional[str] = typer.Argument(None, help="A version: id, prefix, branch, tag, alias, HEAD~N, REV^N "
                                                   "(with -b, default HEAD)."),
    b: Optional[str] = typer.Option(None, "-b", help="Create branch B at REV and follow it."),
    to: Optional[Path] = typer.Option(None, "--to", help="Only write the adapter folder to DIR (new, empty, or one seal wrote); HEAD stays."),
    force: bool = typer.Option(False, "--force", help="Overwrite files seal wrote there even if they were changed (never other files)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.errors import UserError
    from seal.registry.worktree import checkout as do_checkout

    if rev is None and b is None:
        raise UserError("give the revision to check out, e.g. `seal checkout main`")
    out = do_checkout(open_registry(), rev or "HEAD", branch=b, to=to, force=force)
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


@command(help=doc("List, create or delete branches.", "seal branch", "seal branch experiment HEAD~2", "seal branch -d experiment"))
def branch(
    name: Optional[str] = typer.Argument(None, help="Create this branch."),
    rev: str = typer.Argument("HEAD", help="Where the new branch starts."),
    delete: Optional[str] = typer.Option(None, "-d", "--delete", help="Delete branch NAME (its versions stay)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry import porcelain as P

    reg = open_registry()
    if delete:
        out = P.delete_branch(reg, delete)
        print_json(out) if json_ else emit([f"Deleted branch {delete} (was {short(out['id'])})"])
    elif name:
        out = P.create_branch(reg, name, rev)
        print_json(out) if json_ else emit([f"Created branch {name} at {short(out['id'])}"])
    else:
        items = P.list_branches(reg)
        print_json(items) if json_ else emit([f"{'*' if b['current'] else ' '} {b['name']:<20} {short(b['id'])}" for b in items])


@command(help=doc("List tags, or tag a version. Tags never move.", "seal tag", "seal tag v1 HEAD"))
def tag(
    name: Optional[str] = typer.Argument(None, help="Create this tag."),
    rev: str = typer.Argument("HEAD", help="The version to tag."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry import porcelain as P

    reg = open_registry()
    if name:
        out = P.create_tag(reg, name, rev)
        print_json(out) if json_ else emit([f"Tagged {short(out['id'])} as {name}"])
    else:
        items = P.list_tags(reg)
        print_json(items) if json_ else emit([f"{t['name']:<20} {short(t['id'])}" for t in items])


@command(help=doc("List aliases, or point one (e.g. champion, production) at a version. Aliases move; each move "
                  "needs a reason and is kept in the reflog. Use them as revisions: @production.",
                  "seal alias", "seal alias production HEAD -m 'passed the review'"))
def alias(
    name: Optional[str] = typer.Argument(None, help="The alias to set."),
    rev: Optional[str] = typer.Argument(None, help="The version it names."),
    message: str = typer.Option("", "-m", "--message", help="Why it moves (required)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry import porcelain as P
    from seal.registry.errors import UserError

    reg = open_registry()
    if name is None:
        items = P.list_aliases(reg)
        print_json(items) if json_ else emit([f"@{a['name']:<19} {short(a['id'])}" for a in items])
        return
    if rev is None:
        raise UserError(f"give the version alias {name} should name: `seal alias {name} REV -m REASON`")
    out = P.set_alias(reg, name, rev, reason=message)
    print_json(out) if json_ else emit([f"@{out['name']} -> {short(out['id'])}" + ("" if out["moved"] else " (already there)")])


@command(help=doc("Who moved which ref, when, from what to what, and why.", "seal reflog", "seal reflog main -n 5"))
def reflog(
    ref: Optional[str] = typer.Argument(None, help="Only this ref (HEAD, a branch, tag, alias, or refs/...)."),
    n: Optional[int] = typer.Option(None, "-n", min=1, help="Show at most N rows."),
    json_: bool = JsonOpt,
) -> None:
    items = open_registry().reflog(ref, n)
    if json_:
        print_json(items)
        return
    emit([f"{when(e['time'])}  {e['ref']:<22} {short(e['old'])} -> {short(e['new'])}  {e['actor']}  {e['reason']}"
          for e in items])


# --- verify / gc ------------------------------------------------------------------------------

@command(help=doc("Recompute every blob digest, manifest id, parent edge, signature, ref and reflog row, and check "
                  "signers against the trust file. Exit 1 on any fault.", "seal verify", "seal verify --json"))
def verify(json_: bool = JsonOpt) -> None:
    from seal.registry.verify import verify_registry

    faults = verify_registry(open_registry())
    if json_:
        print_json({"ok": not faults, "faults": faults})
    elif faults:
        emit([f"FAULT {short(f['version']) if f['version'] else '-':<12} {f['object']}: {f['fault']}" for f in faults])
    else:
        emit(["verify: ok (every blob, manifest, parent edge, signature, ref and reflog row checks out)"])
    if faults:
        raise typer.Exit(1)


@command(help=doc("Delete litter left by killed commands and blobs no version references, once older than the "
                  "grace period. The only command that deletes blobs; never one a version references.",
                  "seal gc --dry-run", "seal gc --grace 0"))
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only list what would be removed."),
    grace: str = typer.Option("1d", "--grace", help="Keep anything younger than this (0, 90s, 2h, 1d, 2w)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.gc import gc as collect_garbage, parse_grace

    report = collect_garbage(open_registry(), dry_run=dry_run, grace_s=parse_grace(grace))
    if json_:
        print_json(report.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {item.kind:<12} {item.path}  ({item.size} bytes)" for item in report.items]
    lines.append(f"gc: {verb} {len(report.items)} item(s), {report.bytes} bytes")
    emit(lines)


# --- audit --------------------------------------------------------------------------------------

@command(help=doc("The compliance report: what changed the model, when, on what data, was it checked, who moved it.",
                  "seal audit --format html -o audit.html", "seal audit --drift"))
def audit(
    rev: str = typer.Argument("HEAD", help="The version to account for."),
    fmt: str = typer.Option("md", "--format", help="md | json | html."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the report to FILE (default: stdout)."),
    drift: bool = typer.Option(False, "--drift", help="Only the drift table of the first-parent line, one line per version."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.audit import audit_report, check_output, drift_lines, render, write_report

    check_output(fmt, output)
    report = audit_report(open_registry(), rev)
    if drift:
        print_json(report["drift"]) if json_ else emit(drift_lines(report["drift"]))
        return
    if output is None:
        sys.stdout.write(render(report, "json" if json_ else fmt))
        return
    written = write_report(report, fmt, Path(output))
    emit([f"audit of {report['subject'][:12]} written to {p}" for p in written])


# --- db -----------------------------------------------------------------------------------------

def _db_url() -> str:
    import os

    return os.environ.get("SEAL_DATABASE_URL") or open_registry().database_url


@command("current", help=doc("The schema revision of the lineage database, and the newest this seal knows.", "seal db current"))
def db_current(json_: bool = JsonOpt) -> None:
    from seal.registry.store.db import HEAD_REVISION, current_revision
    from seal.registry.store.sql import Database

    db = Database.open(_db_url())
    rev = current_revision(db)
    db.close()
    out = {"current": rev, "head": HEAD_REVISION, "up_to_date": rev == HEAD_REVISION}
    print_json(out) if json_ else emit([f"current {out['current']}  head {out['head']}  "
                                        f"{'up to date' if out['up_to_date'] else 'run `seal db upgrade`'}"])


@command("upgrade", help=doc("Upgrade the lineage database's schema to the newest revision.", "seal db upgrade"))
def db_upgrade(json_: bool = JsonOpt) -> None:
    from seal.registry.store.db import upgrade

    out = {"current": upgrade(_db_url())}
    print_json(out) if json_ else emit([f"schema at {out['current']}"])


# --- policy -------------------------------------------------------------------------------------

@command("show", help=doc("The gates and their thresholds in force, and the policy's digest.", "seal policy show"))
def policy_show(json_: bool = JsonOpt) -> None:
    from seal.registry.policy import read_policy

    p = read_policy(open_registry())
    out = {"digest": p.digest, "gates": p.gates, "settings": p.settings}
    print_json(out) if json_ else emit([f"policy {p.digest}"] + [f"  {k} = {'off' if v is None else v}" for k, v in p.gates.items()]
                                       + [f"  {k} = {v}" for k, v in p.settings.items()])


@command("set", help=doc("Change one gate threshold (or setting) with a reason; the change and its "
                                           "reason are recorded on refs/meta/policy.",
                                           "seal policy set refusal_drop_vs_base_max 0.08 -m 'calibrated on 20 null edits'",
                                           "seal policy set kl_vs_base_max false -m 'drift gate off for the demo'"))
def policy_set(
    key: str = typer.Argument(..., help="A gate key (e.g. js_vs_parent_max) or a setting."),
    value: str = typer.Argument(..., help="A number, or false to switch a gate off."),
    message: str = typer.Option("", "-m", "--message", help="Why (required)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.policy import set_policy

    out = set_policy(open_registry(), key, value, reason=message)
    print_json(out) if json_ else emit([f"{key}: {out['old']} -> {out['new']}  (policy {short(out['digest'][7:])})"])


@command("reset", help=doc("Restore the default policy, with a reason.", "seal policy reset -m 'back to defaults'"))
def policy_reset(message: str = typer.Option("", "-m", "--message", help="Why (required)."), json_: bool = JsonOpt) -> None:
    from seal.registry.policy import reset_policy

    out = reset_policy(open_registry(), reason=message)
    print_json(out) if json_ else emit([f"policy reset to the defaults ({short(out['digest'][7:])})"])


@command("xstest", help=doc(
        "The XSTest prompts the safety gates use: show them, or store the published xstest_prompts.csv (450 prompts) "
        "in the registry so every machine uses all of it; recorded with a reason on refs/meta/xstest.",
        "seal policy xstest", "seal policy xstest ~/data/xstest_prompts.csv -m 'full XSTest for the safety gates'"))
def policy_xstest(
    path: Optional[Path] = typer.Argument(None, help="The published xstest_prompts.csv (omit to show what is in use)."),
    message: str = typer.Option("", "-m", "--message", help="Why (required when giving PATH)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.errors import UserError
    from seal.registry.xstest import XSTEST_REF, read_xstest_file, set_xstest

    if path is not None and not message.strip():
        raise UserError("configuring XSTest needs a reason: give -m REASON")
    data = read_xstest_file(path) if path is not None else None
    reg = open_registry()
    if data is not None:
        out = set_xstest(reg, data, reason=message)
    else:
        digest = reg.read_ref(XSTEST_REF)
        out = {"ref": XSTEST_REF, "new": digest, "prompts": 450 if digest else 50}
    shown = f"the published XSTest, 450 prompts ({short(out['new'][7:])})" if out["new"] else "seal's 50-prompt sample"
    print_json(out) if json_ else emit([f"safety gates use {shown}"])


# --- keys and trust -----------------------------------------------------------------------------

@command("show", help=doc("This registry's signing key, and the keys in the trust file.", "seal key show"))
def key_show(json_: bool = JsonOpt) -> None:
    reg = open_registry()
    trusted = [{"id": k.id, "name": k.name, "public_key": k.public_key} for k in reg.trusted().values()]
    out = {"signer": reg.signer.id, "public_key": reg.signer.public_key, "trust_file": str(reg.trust_path), "trusted": trusted}
    print_json(out) if json_ else emit([f"signing key {reg.signer.id}", f"trust file  {reg.trust_path}"]
                                       + [f"  trusted {k['id'][:16]}  {k['name']}" for k in trusted])


@command("new", help=doc("Make a new signing key when the old one is lost; versions signed before stay "
                                        "verifiable while their key stays in the trust file.", "seal key new"))
def key_new(json_: bool = JsonOpt) -> None:
    from seal.registry.keys import new_key

    out = new_key(open_registry())
    print_json(out) if json_ else emit([f"new signing key {out['signer']}; added to {out['trust_file']}"])


@command("trust", help=doc("Add a public key to the trust file (what `seal pull --trust` does).",
                                          "seal key trust 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29 --name alice"))
def key_trust(
    public_key: str = typer.Argument(..., help="The Ed25519 public key, 64 hex digits."),
    name: str = typer.Option("", "--name", help="Whose key it is."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.keys import trust_key

    out = trust_key(open_registry(), public_key, name)
    print_json(out) if json_ else emit([f"trusted {out['signer']} ({out['name']})" + ("" if out["added"] else ", already trusted")])

