"""The policy: which gates an edit must pass, with their thresholds, in `.seal/policy.toml`.

The file is versioned like everything else: each edit stores the policy's bytes as a blob and
records its digest, and the ref ``refs/meta/policy`` follows the file, so a change of policy
shows in `seal reflog refs/meta/policy` (who, when, from which digest to which).

>>> policy = current_policy(repo)            # doctest: +SKIP
>>> policy.gates["retention_drop_vs_parent_max"]    # doctest: +SKIP
0.02
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import refs as R
from .errors import UserError

POLICY_FILE = "policy.toml"
POLICY_REF = "refs/meta/policy"

DEFAULT_POLICY_TOML = """\
# seal policy: the gates every edit and merge must pass. A failed gate rejects the attempt; it is
# still recorded, with every gate's value, threshold and verdict. Changes to this file are
# recorded: see `seal reflog refs/meta/policy`. Points of accuracy are fractions (0.02 = 2 points).
# Set a gate to false to switch it off (the switch is recorded with the policy's digest).

[gates]
# The edit must teach something: efficacy (QA on --eval, or the passage's NLL drop) above the parent's.
efficacy_gain_min = 0.0
# Retention on the anchor probe set that ships with seal.
retention_drop_vs_parent_max = 0.02
retention_drop_vs_base_max = 0.05
# Drift: mean next-token Jensen-Shannon divergence against the parent (nats) on fixed probes.
js_vs_parent_max = 0.1
# Cumulative drift budget: mean next-token KL(base || candidate) (nats) on the same probes.
kl_vs_base_max = 0.5
"""


@dataclass(frozen=True)
class Policy:
    text: bytes
    digest: str
    gates: dict


def policy_path(repo) -> Path:
    return repo.seal_dir / POLICY_FILE


def parse_policy(text: bytes, where: str = POLICY_FILE) -> dict:
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where} is not valid TOML ({e}); fix it or restore the default from `seal init`") from None
    gates = data.get("gates", {})
    if not isinstance(gates, dict):
        raise UserError(f"{where}: [gates] must be a table of name = threshold")
    out = {}
    for key, value in gates.items():
        if value is False:
            out[key] = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            raise UserError(f"{where}: gate {key} must be a number or false, not {value!r}")
    return out


def write_default_policy(seal_dir: Path) -> None:
    (seal_dir / POLICY_FILE).write_text(DEFAULT_POLICY_TOML)


def current_policy(repo) -> Policy:
    """Read the policy file, store its bytes as a blob, and record a change on refs/meta/policy."""
    path = policy_path(repo)
    if not path.is_file():
        raise UserError(f"{path} is missing; restore it (the defaults are in seal.registry.policy)")
    text = path.read_bytes()
    gates = parse_policy(text, str(path))
    digest = repo.store.put(text)
    with repo.transaction() as conn:
        old = R.read_ref(conn, POLICY_REF)
        if old != digest:
            R.compare_and_swap(conn, POLICY_REF, old=old, new=digest,
                               reason="policy: recorded" if old is None else "policy: changed")
    return Policy(text=text, digest=digest, gates=gates)
