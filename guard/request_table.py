"""The guard's host-side table of live requests: id <-> monitor slot, and what the host knows of each.

Scores, EMAs and rule state live on the device (``guard.monitor``); this table keeps only what the
host must decide on without reading the device back: whether a request must stop, whether any of its
steer rules fired (so steering work can be skipped for the others), shadow mode and its error count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class RequestState:
    slot: int
    stopped: bool = False
    error_stop: bool = False
    steering: bool = False
    shadow: bool = False
    errors: int = 0


class RequestTable:
    """Live requests by id, and the owner of each monitor slot."""

    def __init__(self) -> None:
        self._by_id: dict[str, RequestState] = {}
        self._owner: dict[int, str] = {}

    def add(self, request_id: str, slot: int, shadow: bool) -> RequestState:
        state = RequestState(slot, shadow=shadow)
        self._by_id[request_id] = state
        self._owner[slot] = request_id
        return state

    def pop(self, request_id: str) -> RequestState:
        state = self._by_id.pop(request_id)
        self._owner.pop(state.slot, None)
        return state

    def get(self, request_id: str) -> RequestState | None:
        return self._by_id.get(request_id)

    def __getitem__(self, request_id: str) -> RequestState:
        return self._by_id[request_id]

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def owner(self, slot: int) -> str | None:
        """The id of the request holding monitor slot ``slot`` (None once it finished)."""
        return self._owner.get(slot)

    def known(self, request_ids: Iterable[str]) -> list[RequestState]:
        """The states of those ids that are live (unknown ids are skipped)."""
        return [s for s in (self._by_id.get(r) for r in request_ids) if s is not None]
