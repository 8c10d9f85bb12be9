"""ringwatch's runtime API on Ray: `ringwatch.runtime.init(backend="ray", address=...)`.

Tasks become Ray tasks and actors Ray actors; actor checkpoints, which Ray does
not have, are ringwatch's own (`runtime/checkpoints.py`), restored when Ray
restarts the actor (`max_restarts`). Needs the `ray` extra: `pip install 'ringwatch[ray]'`.
"""

from .backend import RayBackend
from .hosting import RayActorHandle

__all__ = ["RayActorHandle", "RayBackend"]
