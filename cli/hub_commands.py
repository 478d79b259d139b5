"""`seal push` and `seal pull`: the Hugging Face Hub bridge (see seal.registry.hub).

huggingface_hub is imported only inside these commands, so other commands stay fast.
"""

from __future__ import annotations

import sys
from typing import List

import typer

from .framework import JsonOpt, command, doc, open_registry
from .render import emit, print_json, short


def _size(n: int) -> str:
    from seal.registry.hub.layout import human_bytes

    return human_bytes(n)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")


def _announce(plan) -> None:
    """Tell the user, before anything is uploaded, which of their data leaves the machine."""
    data = [u for u in plan.uploads if u.is_data]
    visibility = "private" if plan.private else "PUBLIC"
    if data:
        _say(f"seal: uploading {len(data)} data blob(s) to the {visibility} repo {plan.repo_id} "
             f"(keep them here with --no-data):")
        for u in data:
            _say(f"  {u.role:<9} {u.digest[:19]}…  {_size(u.size):>9}  of {', '.join(short(v) for v in u.versions[:3])}"
                 + (" …" if len(u.versions) > 3 else ""))
    if plan.kept:
        _say(f"seal: withholding {len(plan.kept)} data blob(s); the Hub lineage names them by digest only")


@command(help=doc(
    "Push a version to the Hugging Face Hub, one commit per version (adapter, seal/lineage.json with the "
    "rejected attempts along the path, every blob they name, a model card), each tagged with its short id; "
    "seal tags become Hub tags, aliases Hub tags alias-NAME. Private by default; says which data blobs "
    "(trigger passages, self-edits, eval sets) it uploads. The token comes from HF_TOKEN or `hf auth login`.",
    "seal push me/my-adapter", "seal push me/my-adapter v1 --no-data", "seal push me/my-adapter --public"))
def push(
    repo_id: str = typer.Argument(..., help="The Hub model repo, ORG/NAME (created private if missing)."),
    rev: str = typer.Argument("HEAD", help="The version to push, with the ancestors the Hub lacks."),
    public: bool = typer.Option(False, "--public", help="Publish: create the repo public, or make a private one public."),
    no_data: bool = typer.Option(False, "--no-data", help="Keep data blobs (trigger passages, self-edits, eval "
                                 "sets) here; the Hub lineage then names them by digest only."),
    branch: str = typer.Option("main", "--branch", help="The Hub branch to push to."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a Hub pull request instead of moving the branch."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.hub import execute_push, plan_push

    reg = open_registry()
    plan = plan_push(reg, repo_id, rev, branch=branch, public=public, data=not no_data)
    _announce(plan)
    out = execute_push(reg, plan, create_pr=create_pr)
    if json_:
        print_json(out)
        return
    if out["up_to_date"]:
        emit([f"{repo_id}@{branch} is up to date: it already holds {short(out['id'])} ({out['url']})"])
        return
    tags = {}
    for tag, vid in out["tags"].items():
        tags.setdefault(vid, []).append(tag)
    lines = [f"[{repo_id}@{branch} {p['commit'][:12]}] seal {short(p['id'])} tagged "
             f"{', '.join([p['tag'], *tags.get(p['tag'], [])])}  {p['url']}" for p in out["pushed"]]
    lines += [f"tag {t} -> {v}" for t, v in out["tags"].items() if v not in {p["tag"] for p in out["pushed"]}]
    where = "a private repo" if out["private"] else "a PUBLIC repo" + (" (made public now)" if out["made_public"] else "")
    lines.append(f"pushed {len(out['pushed'])} version(s) to {where}; Hub commit {out['commit']}")
    if out.get("pr_url"):
        lines.append(f"pull request: {out['pr_url']}")
    emit(lines)


def _pull_lines(out: dict) -> list[str]:
    ref = out["ref"]
    if out["up_to_date"]:
        lines = [f"{ref or short(out['head'])} is at {short(out['head'])}: already up to date "
                 f"(commit {out['commit'][:12]})"]
    else:
        attempts = f" ({len(out['attempts'])} rejected attempt(s))" if out["attempts"] else ""
        moved = f"; {ref} -> {short(out['head'])}" if out["moved"] else ""
        got = f"pulled {len(out['imported'])} version(s){attempts}" if out["imported"] else "every version was here"
        lines = [f"{got} from {out['repo_id']}@{out['revision']} (commit {out['commit'][:12]}){moved}"]
    for s in out["signers"]:
        lines.append(f"signed by {s['id']} ({s['status']}, {s['versions']} version(s))")
    if out["withheld"]:
        roles = ", ".join(sorted({w["role"] for w in out["withheld"]}))
        lines.append(f"{len(out['withheld'])} data blob(s) ({roles}) were withheld by the publisher; the versions "
                     f"name them by digest only")
    name = ref or short(out["head"])
    lines.append(f"see it with `seal log {name}`; start a branch on it with `seal checkout -b NAME {name}`")
    return lines


@command(help=doc(
    "Fetch a pushed lineage from the Hub: list the commit's files with their sizes, download "
    "seal/lineage.json and check every manifest, signature and the base, refuse signers outside the "
    "trust file (exit 1) unless --trust names them, then download only the blobs it names (each "
    "size-checked first, against SEAL_PULL_MAX_BYTES) and import. Sets hub/REPO (a branch), "
    "hub/REPO/tags/TAG or hub/REPO/aliases/NAME; tracking refs never move backwards without --force.",
    "seal pull me/my-adapter", "seal pull me/my-adapter@v1 --trust 9c1e4b7a2f3d5e6f"))
def pull(
    spec: str = typer.Argument(..., metavar="REPO_ID[@REVISION]",
                               help="The Hub repo, and a branch, tag, alias-NAME tag, commit or version id."),
    trust: List[str] = typer.Option([], "--trust", help="Trust this signer (its 64-hex fingerprint, or 16+ hex of "
                                    "it) and add it to the trust file; repeatable."),
    force: bool = typer.Option(False, "--force", help="Let the tracking ref move backwards or sideways (or, for a tag, at all)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.hub import pull as pull_lineage

    out = pull_lineage(open_registry(), spec, trust=trust, force=force)
    if json_:
        print_json(out)
        return
    emit(_pull_lines(out))
