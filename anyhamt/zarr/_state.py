"""What the Zarr stores keep per HAMT, shared by every store over it, and how stores pickle.

Several stores can share one HAMT (``with_read_only`` clones, xarray's read-only view, a
pickled copy in the same process), so the metadata cache belongs to the HAMT, not to a store
(the sorted key index lives in the HAMT itself). It lives here in a weak map keyed by the
HAMT object, so it goes away with it.

Pickling (dask): a store pickles to a *ticket* for its HAMT:

* the id of this process and a token naming the HAMT in a process-local registry, so a copy
  unpickled in this process (dask's threaded scheduler, ``LocalCluster(processes=False)``,
  zarr's own ``StoreTests``) uses the very same HAMT and sees and makes the same changes;
* when the HAMT is read-only, what reopens it elsewhere: its store (which pickles to its
  configuration, never to live clients), root and settings. A copy in another process builds
  the HAMT once per process (which does no I/O); the block store connects on first use.

A copy of a store over a *writable* HAMT in another process has no way to reach the
original's buffered changes, so it refuses every call with ``DetachedStoreError`` instead of
writing into a copy that nobody will ever flush.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from .._hamt import HAMT

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from ..cas._base import ContentAddressedStore

__all__ = ["HamtState", "HamtTicket", "hamt_state", "ticket_for"]

_registry_mutex: Final = threading.Lock()
_states: Final[weakref.WeakKeyDictionary[HAMT, HamtState]] = weakref.WeakKeyDictionary()
# Live HAMTs of this process by token, so an in-process copy of a store finds its HAMT.
_live: Final[weakref.WeakValueDictionary[str, HAMT]] = weakref.WeakValueDictionary()
# HAMTs reopened from a ticket in this process, so every copy in a worker shares one (and
# its node cache). Strong references, as a worker keeps reading the same dataset; the
# least recently reopened go first once there are more than _MAX_REOPENED.
_reopened: Final[OrderedDict[tuple[str, Any], HAMT]] = OrderedDict()
_MAX_REOPENED: Final = 16


class HamtState:
    """The per-HAMT state of the Zarr stores (see the module docstring)."""

    __slots__ = ("__weakref__", "metadata", "metadata_generation", "mutex", "token")

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        # Decoded zarr.json values per store view (plain, or one per encryption key+header),
        # then per key. A write through any view drops the key from every view.
        self.metadata: dict[Hashable, dict[str, bytes]] = {}
        # Bumped before and after every metadata write: a read that started before the write
        # sees a different number when it ends and does not cache what it read.
        self.metadata_generation = 0
        self.mutex = threading.Lock()

    def cached(self, view: Hashable, key: str) -> bytes | None:
        entries = self.metadata.get(view)
        return None if entries is None else entries.get(key)

    def remember(self, view: Hashable, key: str, value: bytes, generation: int) -> None:
        """Cache ``value`` unless a write to any metadata happened since ``generation``."""
        with self.mutex:
            if generation == self.metadata_generation:
                self.metadata.setdefault(view, {})[key] = value

    def changed(self, key: str) -> None:
        if key.endswith("zarr.json"):
            self.forget(key)

    def forget(self, key: str) -> None:
        """Drop ``key`` from every view (call before and after writing it)."""
        with self.mutex:
            self.metadata_generation += 1
            for entries in self.metadata.values():
                entries.pop(key, None)


def hamt_state(hamt: HAMT) -> HamtState:
    """The shared state of ``hamt``, created on first use."""
    state = _states.get(hamt)
    if state is None:
        with _registry_mutex:
            state = _states.get(hamt)
            if state is None:
                state = _states[hamt] = HamtState()
                _live[state.token] = hamt
                # Writes made on the HAMT directly drop cached metadata too.
                hamt._on_change = state.changed
    return state


class HamtTicket:
    """What a pickled store carries instead of its HAMT (see the module docstring)."""

    __slots__ = ("pid", "reopen", "token")

    def __init__(self, pid: int, token: str, reopen: tuple[Any, ...] | None) -> None:
        self.pid = pid
        self.token = token
        self.reopen = reopen

    def __reduce__(self) -> tuple[Callable[..., HamtTicket], tuple[Any, ...]]:
        return (HamtTicket, (self.pid, self.token, self.reopen))

    def find(self) -> HAMT | None:
        """The HAMT this ticket names, if this process can reach or reopen it."""
        if self.pid == os.getpid():
            hamt = _live.get(self.token)
            if hamt is not None:
                return hamt
        if self.reopen is None:
            return None
        with _registry_mutex:
            cas, root, hash_fn, max_bucket_size, values_are_bytes = self.reopen
            hamt = _reopened.get((self.token, root))
            if hamt is not None:
                _reopened.move_to_end((self.token, root))
            else:
                hamt = HAMT(
                    cas,
                    hash_fn=hash_fn,
                    root_node_id=root,
                    read_only=True,
                    max_bucket_size=max_bucket_size,
                    values_are_bytes=values_are_bytes,
                )
                _reopened[self.token, root] = hamt
                while len(_reopened) > _MAX_REOPENED:
                    _reopened.popitem(last=False)
        return hamt


def ticket_for(hamt: HAMT) -> HamtTicket:
    """The ticket a store over ``hamt`` pickles to."""
    state = hamt_state(hamt)
    reopen: tuple[Any, ...] | None = None
    root = hamt._flushed_root()
    if hamt.read_only and root is not None:
        cas: ContentAddressedStore = hamt.cas
        reopen = (cas, root, hamt.hash_fn, hamt.max_bucket_size, hamt.values_are_bytes)
    return HamtTicket(os.getpid(), state.token, reopen)
