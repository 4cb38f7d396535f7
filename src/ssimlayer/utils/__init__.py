"""Small helpers for the entry points: project paths, config resolvers, run provenance, memory."""

from ssimlayer.utils.memory import retain_freed_memory
from ssimlayer.utils.paths import CONF_DIR, PROJECT_ROOT, register_resolvers
from ssimlayer.utils.provenance import write_provenance

__all__ = [
    "CONF_DIR",
    "PROJECT_ROOT",
    "register_resolvers",
    "retain_freed_memory",
    "write_provenance",
]
