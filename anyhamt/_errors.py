"""anyhamt's exception tree.

Every error anyhamt raises on purpose is an ``AnyHamtError``. Where a builtin already means
the same thing, the error also subclasses it, so code written for py-hamt (which raised
``KeyError`` and plain ``Exception``) keeps catching what it caught::

    AnyHamtError
    ├── KeyNotFoundError           (KeyError)          a key is not in the map
    │   └── StoreKeyNotFoundError  (FileNotFoundError) a key is not in a Zarr store
    ├── ReadOnlyError              (PermissionError)   writing to a read-only HAMT or store
    │   └── StoreReadOnlyError     (ValueError)        writing through a read-only Zarr store
    ├── InvalidKeyError            (TypeError)         a key that is not a str, or not UTF-8
    ├── InvalidValueError          (TypeError)         a value the HAMT cannot store
    ├── InvalidIdError             (TypeError)         an id of the wrong kind for a store
    ├── InvalidConfigError         (ValueError)        a bad constructor argument
    ├── InvalidRangeError          (ValueError)        a byte range that cannot be served
    ├── HashError                  (ValueError)
    │   ├── HashTooShortError                          hash_fn returned fewer bytes than needed
    │   └── HashExhaustedError                         more colliding keys than a bucket holds
    ├── CorruptBlockError          (ValueError)
    │   ├── CorruptNodeError                           bytes that are not a HAMT node
    │   ├── BlockVerificationError                     bytes that do not match their CID
    │   └── CarFormatError                             bytes that are not a readable CAR
    ├── BlockNotFoundError         (FileNotFoundError) a store has no block for an id
    ├── StoreError                                     a store failed to do its job
    │   ├── StoreClosedError                           the store was closed
    │   └── KuboError                                  a Kubo RPC or gateway request failed
    ├── DecryptionError                                wrong key or header, or altered data
    ├── DetachedStoreError         (RuntimeError)      a store copy that cannot reach its HAMT
    └── LoopBlockedError           (RuntimeError)      waiting would deadlock an event loop
"""

from __future__ import annotations

__all__ = [
    "AnyHamtError",
    "BlockNotFoundError",
    "BlockVerificationError",
    "CarFormatError",
    "CorruptBlockError",
    "CorruptNodeError",
    "DecryptionError",
    "DetachedStoreError",
    "HashError",
    "HashExhaustedError",
    "HashTooShortError",
    "InvalidConfigError",
    "InvalidIdError",
    "InvalidKeyError",
    "InvalidRangeError",
    "InvalidValueError",
    "KeyNotFoundError",
    "KuboError",
    "LoopBlockedError",
    "ReadOnlyError",
    "StoreClosedError",
    "StoreError",
    "StoreKeyNotFoundError",
    "StoreReadOnlyError",
]


class AnyHamtError(Exception):
    """Base class of every error anyhamt raises on purpose."""


class KeyNotFoundError(AnyHamtError, KeyError):
    """The key is not in the map."""

    def __str__(self) -> str:
        # KeyError's own __str__ shows repr(args[0]); a sentence reads better.
        return str(self.args[0]) if self.args else "key not found"


class StoreKeyNotFoundError(KeyNotFoundError, FileNotFoundError):
    """A Zarr store has no value under the key (zarr expects ``FileNotFoundError``)."""


class ReadOnlyError(AnyHamtError, PermissionError):
    """A write was attempted on something opened read-only."""


class StoreReadOnlyError(ReadOnlyError, ValueError):
    """A write through a read-only Zarr store, or a writable store over a read-only HAMT.

    Also a ``ValueError``: that is what zarr's own stores raise here, so code written
    against zarr keeps catching it.
    """


class InvalidKeyError(AnyHamtError, TypeError):
    """A key that is not a ``str``, or a ``str`` with no UTF-8 form (a lone surrogate)."""


class InvalidValueError(AnyHamtError, TypeError):
    """A value the HAMT cannot store as configured."""


class InvalidIdError(AnyHamtError, TypeError):
    """An id that this store cannot have produced (wrong type or format)."""


class InvalidConfigError(AnyHamtError, ValueError):
    """A constructor argument that cannot work."""


class InvalidRangeError(AnyHamtError, ValueError):
    """A byte range (offset/length/suffix) that is malformed or outside the block."""


class HashError(AnyHamtError, ValueError):
    """The key hash cannot place a key."""


class HashTooShortError(HashError):
    """``hash_fn`` returned fewer bytes than the HAMT needs."""


class HashExhaustedError(HashError):
    """More keys share a full hash than one bucket can hold."""


class CorruptBlockError(AnyHamtError, ValueError):
    """A block's bytes cannot be what was asked for."""


class CorruptNodeError(CorruptBlockError):
    """Bytes that do not decode as a HAMT node."""


class BlockVerificationError(CorruptBlockError):
    """A block's bytes do not hash to the CID they were fetched for."""


class CarFormatError(CorruptBlockError):
    """A CAR archive that is malformed, truncated or of a version anyhamt cannot read."""


class BlockNotFoundError(AnyHamtError, FileNotFoundError):
    """The store holds no block for this id."""


class StoreError(AnyHamtError):
    """A store could not complete an operation (I/O, protocol or server failure)."""


class StoreClosedError(StoreError):
    """The store was used after ``aclose()``."""


class KuboError(StoreError):
    """A request to a Kubo RPC endpoint or an IPFS gateway failed, after any retries.

    ``status_code`` is the HTTP status of the last response (``None`` when no response
    came: a timeout or a connection failure); ``url`` is the URL of the last request.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, url: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url


class DecryptionError(AnyHamtError):
    """An encrypted value did not decrypt: wrong key or header, or the bytes were altered.

    Deliberately says nothing more (authenticated encryption cannot tell which).
    """


class DetachedStoreError(AnyHamtError, RuntimeError):
    """A copy of a Zarr store (pickled to another process) that cannot reach its HAMT.

    A writable HAMT buffers its changes in the process that holds it; a copy elsewhere
    could only write into a private copy that nobody flushes, losing the data.
    """


class LoopBlockedError(AnyHamtError, RuntimeError):
    """Waiting here would deadlock: the event loop that must make progress is blocked."""
