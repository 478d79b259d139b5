"""The `seal` app: the table of its commands, and the one place errors become exit codes.

Every command is registered in :data:`COMMANDS`, the table of contents, as huggingface_hub's
cli/hf.py does; the command modules only define functions (marked with
:func:`~seal.cli.framework.command`). :func:`build_app` turns only the invoked command into a typer
command when it can tell which. Nothing here loads a model.

Exit codes: 0 done or accepted; 1 recorded but rejected, differences found, a fault found, or
a ref moved under you; 2 refused with one line that says what to do, nothing written (bad
input, usage errors, a locked or damaged database, a full disk); 3 an internal error (a bug).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from . import diff_commands, edit_commands, hub_commands, learn_commands, registry_commands, team_commands, ui_commands
from .framework import RepoOpt, close_registries, reset_state, state

APP_SETTINGS = dict(
    name="seal",
    help="A versioned registry for the LoRA state of language models, and the SEAL self-edit loop.",
    no_args_is_help=False,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
# Command groups, by name: `seal db ...`, `seal policy ...`, `seal key ...`.
GROUPS = {
    "db": "The lineage database's schema.",
    "policy": "The gates and their thresholds (.seal/policy.toml), changed with a reason.",
    "key": "This registry's signing key and the keys it trusts.",
}

R, E = registry_commands, edit_commands
# (group, command function), in the order `seal --help` lists them.
COMMANDS: list[tuple[str | None, Callable]] = [
    (None, R.init), (None, R.import_), (None, R.base), (None, R.log), (None, R.show), (None, R.status),
    (None, R.checkout), (None, R.branch), (None, R.tag), (None, R.alias), (None, R.reflog), (None, R.verify),
    (None, R.gc), (None, R.audit),
    ("db", R.db_current), ("db", R.db_upgrade),
    ("policy", R.policy_show), ("policy", R.policy_set), ("policy", R.policy_reset), ("policy", R.policy_xstest),
    ("key", R.key_show), ("key", R.key_new), ("key", R.key_trust),
    (None, E.edit), (None, E.merge), (None, E.consolidate),
    (None, hub_commands.push), (None, hub_commands.pull),
    (None, diff_commands.diff), (None, diff_commands.revert),
    (None, team_commands.clone),
    (None, learn_commands.learn),
    (None, ui_commands.ui),
]


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"seal {version('seal-registry')}"
    except PackageNotFoundError:
        return "seal (not installed)"


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_text() + "\n")
        raise typer.Exit(0)


def _global(
    repo: Optional[Path] = RepoOpt,
    version: bool = typer.Option(False, "--version", help="Print seal's version and exit.", is_eager=True,
                                 callback=_show_version),
) -> None:
    """A versioned registry for the LoRA state of language models, and the SEAL self-edit loop."""
    if repo is not None:
        state.repo_path = repo


def _top(group: str | None, fn: Callable) -> str:
    return group or fn.seal_command.name


def build_app(only: str | None = None) -> typer.Typer:
    """The typer app; with ``only``, just that command or group, since typer converts every
    registered function on each run and a read command should pay for one, not sixty."""
    app = typer.Typer(**APP_SETTINGS)
    app.callback()(_global)
    groups: dict[str, typer.Typer] = {}
    for group, fn in COMMANDS:
        if only is not None and _top(group, fn) != only:
            continue
        spec = fn.seal_command
        if group is None:
            app.command(spec.name, help=spec.help)(fn)
            continue
        if group not in groups:
            groups[group] = typer.Typer(help=GROUPS[group], no_args_is_help=True)
            app.add_typer(groups[group], name=group)
        groups[group].command(spec.name, help=spec.help)(fn)
    return app


def _invoked(argv: List[str]) -> str | None:
    """The command (or group) named in ``argv`` after the global options, when it is a known one."""
    if os.environ.get("_SEAL_COMPLETE"):
        return None  # shell completion needs every command
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--repo":
            i += 2
            continue
        if arg.startswith("--repo="):
            i += 1
            continue
        if arg.startswith("-"):
            return None
        known = {_top(group, fn) for group, fn in COMMANDS}
        return arg if arg in known else None
    return None


def _say(message: str) -> None:
    from .render import printable

    text = " ".join(str(message).split()) if "\n" in str(message) else str(message)
    sys.stderr.write(printable(text) + "\n")


def _os_error(e: OSError) -> tuple[str, int]:
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}; free some space and run the command again (nothing was recorded)", 2
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where}: {e.strerror}; check the folder's permissions and the disk (nothing was recorded)", 2
    if e.errno == errno.EPIPE:
        return "", 0
    return f"{e.strerror or e}{where}; nothing was recorded", 2


def _click_error(e) -> tuple[str, int]:
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None and getattr(ctx, "command_path", None) else "seal"
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    return f"{message} (see `{where} --help`)", int(getattr(e, "exit_code", 2) or 2)


def run(argv: List[str]) -> int:
    """Run the app on ``argv``; return the exit code instead of exiting (used in-process by tests)."""
    reset_state()
    if not argv:
        _say("seal: error: no command given; see `seal --help`")
        return 2
    blank = _blank_argument(argv)
    if blank is not None:
        _say(f"seal: error: {blank}")
        return 2
    try:
        return _dispatch(argv)
    finally:
        close_registries()


def _blank_argument(argv: List[str]) -> str | None:
    """An empty argument is always a slip (``--repo ''`` would mean the current folder, ``branch ''``
    a listing): refuse it before anything runs.

    >>> _blank_argument(["branch", ""])
    "an empty argument after 'branch'; give a value"
    """
    for i, arg in enumerate(argv):
        if not arg.strip():
            where = f"after {argv[i - 1]!r}" if i else "first"
            return f"an empty argument {where}; give a value"
        if arg.startswith("--") and "=" in arg and not arg.split("=", 1)[1].strip():
            return f"{arg.split('=', 1)[0]} has an empty value; give a value"
    return None


def _dispatch(argv: List[str]) -> int:
    from seal.registry.errors import SealError

    try:
        rc = build_app(_invoked(argv))(args=argv, standalone_mode=False, prog_name="seal")
        return rc if isinstance(rc, int) else 0
    except SealError as e:
        _say(f"seal: error: {e}")
        return e.exit_code
    except (typer.Exit,) as e:
        if e.exit_code == 130:  # typer turns Ctrl-C into Exit(130)
            _say("seal: interrupted; nothing half-written was kept")
        return e.exit_code
    except typer.TyperException as e:  # usage errors: typer's public base of its (vendored) click errors
        message, code = _click_error(e)
        _say(f"seal: error: {message}")
        return 2 if code not in (0, 1, 2) else code
    except (typer.Abort, KeyboardInterrupt):
        _say("seal: interrupted; nothing half-written was kept")
        return 130
    except OSError as e:
        message, code = _os_error(e)
        if message:
            _say(f"seal: error: {message}")
        return code
    except MemoryError:
        _say("seal: error: out of memory; try a smaller --candidates or --batch-size")
        return 2
    except Exception as e:
        if os.environ.get("SEAL_DEBUG"):
            raise
        _say(f"seal: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
             f"(a bug in seal; rerun with SEAL_DEBUG=1 for the traceback and report it)")
        return 3


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the `seal` console script."""
    for name in ("stdout", "stderr"):  # `seal log >&-`: write into the void rather than crash
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))
    code = run(list(sys.argv[1:] if argv is None else argv))
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # `seal log | head`: the reader left; like git, say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = code if code else 0
    sys.exit(code)
