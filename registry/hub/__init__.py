"""The Hugging Face Hub bridge: push versions as Hub commits, pull them back after checking everything.

The bridge is split by job; this module gathers the public names:

- :mod:`.layout`: what a push looks like on the Hub (files, tags, tracking refs, limits);
- :mod:`.lineage`: ``seal/lineage.json``, built from the registry and checked on a pull;
- :mod:`.card`: the model card;
- :mod:`.pushing`: `seal push` (private by default; ``--no-data`` withholds data blobs);
- :mod:`.pulling` and :mod:`.importing`: `seal pull`, reading then writing;
- :mod:`.withheld`: the record of data a publisher withheld;
- :mod:`.errors`: the Hub's failures as seal errors, and quiet progress bars.

``huggingface_hub`` is imported inside the functions that talk to the Hub, so commands that do
not (``seal log`` and friends) never pay for it.

>>> push(Registry.open(), "me/my-adapter", "HEAD")                  # doctest: +SKIP
{'repo_id': 'me/my-adapter', 'branch': 'main', 'pushed': [...], 'private': True, ...}
>>> pull(Registry.open(), "me/my-adapter@v1", trust=["9c1e…"])     # doctest: +SKIP
{'repo_id': 'me/my-adapter', 'head': '9f2c…', 'imported': [...], 'ref': 'hub/me/my-adapter/tags/v1', ...}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Where each public name lives. Loaded on first use (PEP 562): ``seal verify`` reads the withheld
#: record through this package and should not load the push and pull machinery to do so.
_WHERE = {
    "PullRefused": "..errors", "UntrustedSigner": "..errors", "model_card": ".card", "hub_errors": ".errors",
    "quiet_unless_terminal": ".errors", "LINEAGE_FILE": ".layout", "parse_repo_spec": ".layout",
    "remote_ref": ".layout", "tracking_ref": ".layout", "LINEAGE_FORMAT": ".lineage", "check_lineage": ".lineage",
    "lineage_document": ".lineage", "pull": ".pulling", "PushPlan": ".pushing", "execute_push": ".pushing",
    "plan_push": ".pushing", "push": ".pushing",
}

if TYPE_CHECKING:  # the same names, spelled out for type checkers and import graphs (a test keeps them equal)
    from ..errors import PullRefused, UntrustedSigner
    from .card import model_card
    from .errors import hub_errors, quiet_unless_terminal
    from .layout import LINEAGE_FILE, parse_repo_spec, remote_ref, tracking_ref
    from .lineage import LINEAGE_FORMAT, check_lineage, lineage_document
    from .pulling import pull
    from .pushing import PushPlan, execute_push, plan_push, push


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = list(_WHERE)
