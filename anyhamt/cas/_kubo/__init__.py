"""KuboCAS: blocks on IPFS through a Kubo daemon's RPC API and HTTP gateways.

Writes go to the RPC API (``/api/v0/block/put``), many blocks per request; reads go to a
gateway (``/ipfs/{cid}?format=raw``) and every block read is checked against its CID.

One module per concern; read ``_facade.py`` first:

* ``_facade``: ``KuboCAS``, the public API, wiring the parts below together;
* ``_config``: URL normalisation, hash function, chunker, timeouts, credentials and the
  origins they may be sent to;
* ``_clients``: per-loop httpx clients, fast-path pools and limiters, closed on their own
  loop by a keeper task;
* ``_requests``: httpx requests with retries (backoff, ``Retry-After``), Kubo's RPC;
* ``_gateways``: gateway reads: health and failover, the fast GET path
  (``anyhamt/cas/_http.py``), verification, range checks;
* ``_uploads``: the write queue and batched ``block/put`` uploads.
"""

from __future__ import annotations

from typing import Any

import httpx

from ._facade import KuboCAS

__all__ = ["KuboCAS"]


def _unpickle_kubo(settings: dict[str, Any], limits: tuple[float | None, ...]) -> KuboCAS:
    """What a pickled ``KuboCAS`` calls to rebuild itself (see ``KuboCAS.__reduce__``)."""
    if len(set(limits)) == 1 and limits[0] is not None:
        return KuboCAS(**settings, timeout=limits[0])
    # Uneven limits came from a client's Timeout: keep them, as the original did.
    cas = KuboCAS(**settings)
    connect, read, write, pool = limits
    cas._set_timeout(httpx.Timeout(connect=connect, read=read, write=write, pool=pool))
    return cas
