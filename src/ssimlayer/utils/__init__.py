"""Small helpers for the entry points: project paths, config resolvers, run provenance."""

from ssimlayer.utils.paths import CONF_DIR, PROJECT_ROOT, compose_config, register_resolvers
from ssimlayer.utils.provenance import write_provenance

__all__ = ["CONF_DIR", "PROJECT_ROOT", "compose_config", "register_resolvers", "write_provenance"]
