"""The code of remote functions and actor classes a node knows, by id (the SHA-1 of the pickle)."""

from __future__ import annotations

from collections.abc import Callable

from .errors import ObjectLostError


class FunctionTable:
    """Pickled code by function id; code this node never saw is looked up in the GCS (`lookup`).

    `on_new` hears of code registered here first (a cluster node records it in the GCS).
    Used on the node's dispatcher thread only.
    """

    def __init__(self, lookup: Callable[[str], bytes | None] | None = None,
                 on_new: Callable[[str, bytes], None] | None = None):
        self._code: dict[str, bytes] = {}
        self._lookup = lookup
        self._on_new = on_new

    def __len__(self) -> int:
        return len(self._code)

    def register(self, function_id: str, code: bytes) -> None:
        """Code registered by a driver or worker of this node."""
        if function_id not in self._code and self._on_new is not None:
            self._on_new(function_id, code)
        self._code[function_id] = code

    def add(self, function_id: str, code: bytes) -> None:
        """Code that came along with a call forwarded here (recorded elsewhere already)."""
        self._code.setdefault(function_id, code)

    def code_of(self, function_id: str) -> bytes:
        code = self._code.get(function_id)
        if code is None and self._lookup is not None:  # a call forwarded from a node that knew it
            code = self._lookup(function_id)
            if code is not None:
                self._code[function_id] = code
        if code is None:
            raise ObjectLostError(f"the code of function {function_id} is not registered anywhere")
        return code
