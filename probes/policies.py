"""The catalogue's default policy, and loading a pack with its policy (checked) in one call.

The default policy is a data file of this package (``probes/catalogue/default_policy.yaml``), so
finding it belongs here and not in the engine-free core, which only parses policies.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from guard.pack import AxisPack
from guard.policy import Policy, load_policy, policy_from_text
from guard.policy_check import require_runnable

log = logging.getLogger(__name__)

DEFAULT_POLICY_RESOURCE = ("probes", "catalogue/default_policy.yaml")


def default_policy_text() -> str:
    package, name = DEFAULT_POLICY_RESOURCE
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def default_policy() -> Policy:
    """The policy shipped with the built-in catalogue (``probes/catalogue/default_policy.yaml``)."""
    package, name = DEFAULT_POLICY_RESOURCE
    return policy_from_text(default_policy_text(), source=f"{package}/{name}")


def policy_or_default(path: str | Path | None) -> Policy:
    """The policy in ``path``, or the catalogue's default one when no file is given."""
    return load_policy(path) if path else default_policy()


def load_pack_and_policy(pack_path: str | Path, policy_path: str | Path | None,
                         warn: bool = False) -> tuple[AxisPack, Policy]:
    """Load both artifacts and refuse a policy that cannot run on this pack (``warn``: log its warnings;
    the ``Guard`` logs them itself when it is built)."""
    pack = AxisPack.load(pack_path)
    policy = policy_or_default(policy_path)
    check = require_runnable(policy, pack, where=str(pack_path))
    for warning in check.warnings if warn else ():
        log.warning("axisguard policy %s: %s", policy.name, warning)
    return pack, policy
