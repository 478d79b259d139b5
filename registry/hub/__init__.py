"""The Hugging Face Hub bridge: push versions as Hub commits, pull them back after checking everything.

The bridge is split by job; this module gathers the public names:

- :mod:`.layout`: what a push looks like on the Hub (files, tags, tracking refs, limits);
- :mod:`.lineage`: ``seal/lineage.json``, built from the registry and checked on a pull;
- :mod:`.card`: the model card;
- :mod:`.push`: `seal push` (private by default; ``--no-data`` withholds data blobs);
- :mod:`.pull` and :mod:`.importing`: `seal pull`, reading then writing;
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

from ..errors import PullRefused, UntrustedSigner
from .card import model_card
from .errors import hub_errors, quiet_unless_terminal
from .layout import LINEAGE_FILE, parse_repo_spec, remote_ref, tracking_ref
from .lineage import LINEAGE_FORMAT, check_lineage, lineage_document
from .pull import pull
from .push import PushPlan, execute_push, plan_push, push

__all__ = [
    "push", "plan_push", "execute_push", "pull", "check_lineage", "lineage_document", "model_card",
    "parse_repo_spec", "remote_ref", "tracking_ref", "PushPlan", "PullRefused", "UntrustedSigner",
    "LINEAGE_FILE", "LINEAGE_FORMAT", "hub_errors", "quiet_unless_terminal",
]
