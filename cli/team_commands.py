"""Commands for a registry shared by a team: `seal clone`. Nothing here loads a model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .framework import JsonOpt, command, doc
from .render import emit, print_json, short


@command(help=doc(
    "Attach a working folder to an existing registry (its database and object store), so that several "
    "machines share one: each sees the others' versions at once, checks them out, diffs and merges them, "
    "and refs move only by compare-and-swap. The folder gets its own signing key and its own HEAD; the "
    "team's trust file is named, not copied. Everything is checked before anything is written.",
    "seal clone postgresql://me@db.internal/seal ./work --objects s3://team-blobs/seal "
    "--trust-file /team/seal/allowed_signers",
    "seal clone ../first-folder ./second-folder",
))
def clone(
    url: str = typer.Argument(..., metavar="URL", help="The registry's database URL (postgresql://USER@HOST/DB, "
                              "password in ~/.pgpass or PGPASSWORD; or sqlite:///PATH), or a registry folder on "
                              "this machine, which lends its database, store and trust file."),
    path: Path = typer.Argument(Path("."), help="The folder to attach (made if missing; default: here)."),
    objects: Optional[str] = typer.Option(None, "--objects", help="The registry's object store, e.g. "
                                          "s3://BUCKET/PREFIX (default: SEAL_OBJECTS_URL)."),
    trust_file: Optional[Path] = typer.Option(None, "--trust-file", help="The team's trust file, which every "
                                              "attached folder names (default: SEAL_ALLOWED_SIGNERS)."),
    branch: Optional[str] = typer.Option(None, "-b", "--branch", help="The branch HEAD follows (default: the "
                                         "one the creator's folder follows, else main)."),
    name: Optional[str] = typer.Option(None, "--name", help="This folder's name in the registry, unique in the "
                                       "team (default: HOST-xxxxxx); its HEAD is refs/worktrees/NAME/HEAD."),
    tracking: Optional[str] = typer.Option(None, "--tracking", help="The team's MLflow tracking server, kept in "
                                           "config.toml (default: MLFLOW_TRACKING_URI, else runs stay in this folder)."),
    json_: bool = JsonOpt,
) -> None:
    from seal.registry.clone import clone_registry

    out = clone_registry(path, url, objects_url=objects, trust_file=trust_file, branch=branch, name=name,
                         tracking_uri=tracking)
    if json_:
        print_json(out.to_json())
        return
    lines = [f"Attached {out.path} as {out.name}: {out.versions} version(s), HEAD follows {out.branch} "
             f"({short(out.id) if out.id else 'no versions yet'})",
             f"signing key {out.signer}"]
    if out.trusted:
        lines.append(f"trusted: added to {out.trust_file}")
    else:
        lines.append(f"not trusted yet: ask whoever keeps {out.trust_file} to add this line "
                     f"(until then `seal verify` names this key as untrusted):")
        lines.append(f"  {out.trust_line}")
    emit(lines)
