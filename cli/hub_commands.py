"""`seal push` and `seal pull`: the Hugging Face Hub bridge (see seal.registry.hub).

huggingface_hub is imported only inside these commands, so other commands stay fast.
"""

from __future__ import annotations

from typing import List

import typer

from .app import JsonOpt, command, open_registry
from .render import emit, print_json, short


@command()
def push(
    repo_id: str = typer.Argument(..., help="The Hub model repo, ORG/NAME (created if missing)."),
    rev: str = typer.Argument("HEAD", help="The version to push, with the ancestors the Hub lacks."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (only when it does not exist)."),
    branch: str = typer.Option("main", "--branch", help="The Hub branch to push to."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a Hub pull request instead of moving the branch."),
    json_: bool = JsonOpt,
) -> None:
    """Push a version to the Hugging Face Hub: one commit per version (adapter, seal/lineage.json,
    model card), each tagged with its short id. The token comes from HF_TOKEN or `hf auth login`."""
    from seal.registry.hub import push as push_version

    out = push_version(open_registry(), repo_id, rev, branch=branch, private=private or None, create_pr=create_pr)
    if json_:
        print_json(out)
        return
    if out["up_to_date"]:
        emit([f"{repo_id}@{branch} is up to date: it already holds {short(out['id'])} ({out['url']})"])
        return
    lines = [f"[{repo_id}@{branch} {p['commit'][:12]}] seal {short(p['id'])} tagged {p['tag']}  {p['url']}" for p in out["pushed"]]
    lines.append(f"pushed {len(out['pushed'])} version(s); Hub commit {out['commit']}")
    if out.get("pr_url"):
        lines.append(f"pull request: {out['pr_url']}")
    emit(lines)


@command()
def pull(
    spec: str = typer.Argument(..., metavar="REPO_ID[@REVISION]", help="The Hub repo, and a branch, tag or commit."),
    trust: List[str] = typer.Option([], "--trust", help="Trust this signer (its id or a 16+ hex prefix) and add it to the trust file."),
    force: bool = typer.Option(False, "--force", help="Let the tracking ref move backwards or sideways."),
    json_: bool = JsonOpt,
) -> None:
    """Fetch a pushed lineage from the Hub; check every file name, digest, manifest id, signature and
    the base before importing anything; set the remote-tracking ref hub/REPO_ID."""
    from seal.registry.hub import pull as pull_lineage

    out = pull_lineage(open_registry(), spec, trust=trust, force=force)
    if json_:
        print_json(out)
        return
    if out["up_to_date"]:
        lines = [f"{out['ref']} is at {short(out['head'])}: already up to date (commit {out['commit'][:12]})"]
    else:
        lines = [
            f"pulled {len(out['imported'])} version(s) from {out['repo_id']} (commit {out['commit'][:12]}); "
            f"{out['ref']} -> {short(out['head'])}",
        ]
    lines.append(f"see it with `seal log {out['ref']}`; start a branch on it with `seal checkout -b NAME {out['ref']}`")
    emit(lines)

