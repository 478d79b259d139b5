"""The policy: which gates an edit must pass, with their thresholds, in `.seal/policy.toml`.

Reading is pure (:func:`read_policy`); recording is explicit (:func:`record_policy`): the
writer that is about to cite a policy in a version stores its bytes as a blob and moves
``refs/meta/policy`` to it when it changed, so `seal reflog refs/meta/policy` shows who changed
the policy and when. The table of gates and their defaults lives in
:mod:`seal.registry.vocabulary`.

>>> gates, settings = parse_policy(render_policy().encode())
>>> gates["js_vs_parent_max"], settings["weight_norm_window"]
(0.2, 5)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import PolicyError, RefConflict, UserError
from .files import read_small, write_atomic
from .vocabulary import GATES, GATES_BY_KEY, SETTINGS, SETTINGS_BY_KEY

POLICY_FILE = "policy.toml"
POLICY_REF = "refs/meta/policy"


def render_policy(gates: dict | None = None, settings: dict | None = None) -> str:
    """The policy file's text: every gate with its threshold (default, or given) and why."""
    gates = gates or {}
    settings = settings or {}
    lines = [
        "# seal policy: the gates every edit and merge must pass. A failed gate rejects the attempt;",
        "# it is still recorded, with every gate's value, threshold and verdict. Change it with",
        "# `seal policy set KEY VALUE -m REASON`; changes are recorded (`seal reflog refs/meta/policy`).",
        "# Set a gate to false to switch it off.",
        "",
        "[gates]",
    ]
    for g in GATES:
        value = gates.get(g.policy_key, g.default)
        lines += [f"# {g.why}", f"{g.policy_key} = {_toml_value(value)}"]
    lines += ["", "[settings]"]
    for s in SETTINGS:
        lines += [f"# {s.why}", f"{s.key} = {settings.get(s.key, s.default)}"]
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    return "false" if value is None else repr(float(value))


@dataclass(frozen=True)
class Policy:
    text: bytes
    digest: str
    gates: dict
    settings: dict


def policy_path(reg) -> Path:
    return reg.seal_dir / POLICY_FILE


def parse_policy(text: bytes, where: str = POLICY_FILE) -> tuple[dict, dict]:
    """(gate thresholds, settings) from the file's bytes; an error names the offending key."""
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{where} is not valid TOML ({e}); fix it or restore the default with `seal policy reset`") from None
    unknown_sections = sorted(set(data) - {"gates", "settings"})
    if unknown_sections:
        raise PolicyError(f"{where}: unknown section(s) {', '.join(unknown_sections)}; known: [gates], [settings]")
    gates = data.get("gates", {})
    if not isinstance(gates, dict):
        raise PolicyError(f"{where}: [gates] must be a table of name = threshold")
    out = {g.policy_key: g.default for g in GATES}
    for key, value in gates.items():
        out[key] = parse_gate_value(key, value, where)
    return out, _parse_settings(data.get("settings") or {}, where)


def parse_gate_value(key: str, value, where: str = POLICY_FILE) -> float | None:
    if key not in GATES_BY_KEY:
        raise PolicyError(f"{where}: unknown gate {key!r}; known: {', '.join(GATES_BY_KEY)}")
    if value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{where}: gate {key} must be a number or false, not {value!r}")
    if not math.isfinite(float(value)) or abs(float(value)) > 1e9:
        raise PolicyError(f"{where}: gate {key} = {value!r} is not a finite threshold; give a number or false")
    return float(value)


def _parse_settings(table, where: str) -> dict:
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: [settings] must be a table")
    settings = {s.key: s.default for s in SETTINGS}
    for key, value in table.items():
        if key not in SETTINGS_BY_KEY:
            raise PolicyError(f"{where}: unknown setting {key!r}; known: {', '.join(SETTINGS_BY_KEY)}")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
            raise PolicyError(f"{where}: setting {key} = {value!r} must be an integer from 1 to 1000")
        settings[key] = value
    return settings


def write_default_policy(seal_dir: Path) -> None:
    (seal_dir / POLICY_FILE).write_text(render_policy())


SYNCED_FILE = "policy.synced"


def read_policy(reg) -> Policy:
    """The policy in force, parsed and validated. Pure: writes nothing.

    That is the policy file, unless this folder has not touched the file since it last recorded it
    and the team has recorded another policy since (another folder ran `seal policy set`): then
    the recorded one is in force, so a stale copy never flips the shared ``refs/meta/policy`` back.
    A file changed here (by hand, even back to an older policy) is what this folder means.
    """
    from .store.objects import blob_digest

    path = policy_path(reg)
    try:
        text = read_small(path, "the policy file")
    except FileNotFoundError:
        raise PolicyError(f"{path} is missing; restore it with `seal policy reset`") from None
    gates, settings = parse_policy(text, str(path))
    digest = blob_digest(text)
    if digest == _synced(reg):
        newer = _recorded_policy(reg, digest)
        if newer is not None:
            return newer
    return Policy(text=text, digest=digest, gates=gates, settings=settings)


def _synced(reg) -> str | None:
    """The digest of policy.toml as this folder last recorded or wrote it."""
    try:
        return read_small(reg.seal_dir / SYNCED_FILE, "the policy sync mark", 1024).decode().strip() or None
    except (OSError, UserError, UnicodeDecodeError):
        return None


def _mark_synced(reg, digest: str) -> None:
    write_atomic(reg.seal_dir / SYNCED_FILE, (digest + "\n").encode())


def _recorded_policy(reg, digest: str) -> Policy | None:
    current = reg.read_ref(POLICY_REF)
    if current is None or current == digest or not reg.store.has(current):
        return None
    text = reg.store.get(current)
    gates, settings = parse_policy(text, f"the recorded policy {current}")
    return Policy(text=text, digest=current, gates=gates, settings=settings)


def record_policy(reg, policy: Policy, reason: str | None = None) -> str:
    """Store the policy's bytes and move refs/meta/policy to them if they changed; the digest.

    Afterwards policy.toml holds this policy (a stale copy is brought up to date) and this folder
    remembers it as synced.
    """
    digest = reg.store.put(policy.text)
    old = reg.read_ref(POLICY_REF)
    if old != digest:
        why = reason or ("policy: recorded" if old is None else "policy: changed (policy.toml edited by hand)")
        try:
            reg.move_ref(POLICY_REF, new=digest, expected=old, reason=why)
        except RefConflict:  # another writer recorded the same change first
            if reg.read_ref(POLICY_REF) != digest:
                raise
    _write_file(reg, policy.text)
    _mark_synced(reg, digest)
    return digest


def _write_file(reg, text: bytes) -> None:
    path = policy_path(reg)
    try:
        if path.read_bytes() == text:
            return
    except OSError:
        pass
    write_atomic(path, text)


def _parse_cli_value(key: str, text: str):
    text = str(text).strip()
    if text.lower() in ("false", "off", "none"):
        return False
    try:
        return int(text) if key in SETTINGS_BY_KEY else float(text)
    except ValueError:
        raise PolicyError(f"{key} takes a number{'' if key in SETTINGS_BY_KEY else ' or false'}, not {text!r}") from None


def set_policy(reg, key: str, value: str, *, reason: str) -> dict:
    """Change one threshold or setting, recording the change and its reason on refs/meta/policy.

    >>> set_policy(reg, "js_vs_parent_max", "0.25", reason="measured 0.12-0.19 per edit")   # doctest: +SKIP
    {'key': 'js_vs_parent_max', 'old': 0.2, 'new': 0.25, 'digest': 'sha256:…'}
    """
    from .porcelain import check_message

    if not reason or not reason.strip():
        raise PolicyError("a policy change needs a reason: give -m REASON")
    check_message(reason)
    if key not in GATES_BY_KEY and key not in SETTINGS_BY_KEY:
        raise PolicyError(f"unknown policy key {key!r}; known: {', '.join([*GATES_BY_KEY, *SETTINGS_BY_KEY])}")
    current = read_policy(reg)
    raw = _parse_cli_value(key, value)
    gates, settings = dict(current.gates), dict(current.settings)
    if key in GATES_BY_KEY:
        old, gates[key] = gates[key], parse_gate_value(key, raw, "the value")
    else:
        old = settings[key]
        settings[key] = _parse_settings({key: raw}, "the value")[key]
    new = gates.get(key, settings.get(key))
    text = render_policy(gates, settings)
    parse_policy(text.encode(), "the new policy")  # every refusal comes before the first write
    record_policy(reg, current)  # a hand edit made before this change is recorded as itself first
    digest = _write_and_record(reg, text, f"policy: {key} {old} -> {new}: {reason.strip()}")
    return {"key": key, "old": old, "new": new, "digest": digest}


def reset_policy(reg, *, reason: str) -> dict:
    from .porcelain import check_message

    if not reason or not reason.strip():
        raise PolicyError("a policy reset needs a reason: give -m REASON")
    check_message(reason)
    return {"digest": _write_and_record(reg, render_policy(), f"policy: reset to the defaults: {reason.strip()}")}


def _write_and_record(reg, text: str, reason: str) -> str:
    """Write policy.toml atomically and record it; the file and the ref change together or not at all."""
    parse_policy(text.encode(), "the new policy")
    digest = reg.store.put(text.encode())
    old = reg.read_ref(POLICY_REF)
    write_atomic(policy_path(reg), text.encode())
    if old != digest:
        reg.move_ref(POLICY_REF, new=digest, expected=old, reason=reason)
    _mark_synced(reg, digest)
    return digest


__all__ = ["Policy", "read_policy", "record_policy", "parse_policy", "render_policy", "POLICY_FILE", "POLICY_REF"]
