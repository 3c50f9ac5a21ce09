"""The HAMT's write side: an in-memory tree of changed nodes, and how it is saved.

A read-write HAMT buffers its changes in a tree of ``WriteNode``s. A node is copied from
the store when a write first passes through it and marked dirty when changed; untouched
subtrees stay stored links. ``flush()`` saves the dirty nodes bottom-up, a level at a time,
in batches, and yields the new root id.

The tree keeps the shape canonical (docs/architecture.md §2): a child exists exactly when
more than ``max_bucket_size`` keys share its slot, so an insert that overfills a bucket
splits it into a child, and a delete that brings a subtree to ``max_bucket_size`` keys or
fewer folds it back into its parent's bucket.

Every method here runs under the HAMT's lock; the facade (``anyhamt/_hamt.py``) takes it.
Each is cancellation-safe: every load happens before the first change, so a cancelled
insert or remove leaves the tree as it was, and a cancelled flush leaves a valid, partly
saved tree that the next flush finishes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ._codec import empty_slots, encode_node
from ._errors import HashExhaustedError, KeyNotFoundError
from ._hamt_read import iter_buckets_stored, lookup_stored, node_cost

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._codec import Pointer
    from ._hamt_read import BlockLoader
    from .cas._base import ContentAddressedStore

__all__ = ["WriteNode", "WriteTree"]

# Nodes saved per batch during a flush; bounds the memory held by encoded blocks.
_FLUSH_BATCH: Final = 1024


class WriteNode:
    """A node of the in-memory write tree.

    ``slots`` holds ``None``, a bucket ``dict``, a stored link ``[pointer]`` or a child
    ``WriteNode``; ``children`` indexes the latter so a flush need not scan 256 slots per
    node. ``link`` is the id of the stored node this one equals while it is clean.
    """

    __slots__ = ("children", "dirty", "link", "slots")

    def __init__(self, slots: list[Any], link: Pointer | None, dirty: bool) -> None:
        self.slots = slots
        self.link = link
        self.dirty = dirty
        self.children: dict[int, WriteNode] = {}

    def attach(self, index: int, child: WriteNode) -> None:
        self.slots[index] = child
        self.children[index] = child

    def put(self, index: int, slot: Any) -> None:
        """Set a slot to a bucket, a stored link or ``None``."""
        self.slots[index] = slot
        self.children.pop(index, None)


class WriteTree:
    """The buffered changes of a read-write HAMT.

    ``root`` is the top ``WriteNode``, or ``None`` when nothing is buffered (every change
    has been flushed, or none was made since the HAMT was opened on a stored root); then
    ``open(stored_root)`` copies the stored root in before the first change.
    """

    __slots__ = ("_cas", "_hash_fn", "_loader", "_max_bucket_size", "root")

    def __init__(
        self,
        cas: ContentAddressedStore,
        loader: BlockLoader[list[Any]],
        hash_fn: Callable[[bytes], bytes],
        max_bucket_size: int,
    ) -> None:
        self._cas = cas
        self._loader = loader
        self._hash_fn = hash_fn
        self._max_bucket_size = max_bucket_size
        self.root: WriteNode | None = None

    def start_empty(self) -> None:
        """Buffer an empty map (a new HAMT, which has no stored root yet)."""
        self.root = WriteNode(empty_slots(), None, True)

    def discard(self) -> None:
        """Forget every buffered change."""
        self.root = None

    async def open(self, stored_root: Pointer) -> WriteNode:
        """The root node, copied from ``stored_root`` when nothing is buffered yet."""
        root = self.root
        if root is None:
            root = self.root = await self._materialize(stored_root)
        return root

    def slot(self, key_hash: bytes, depth: int, key: str) -> int:
        """The slot of ``key`` at ``depth``; ``HashExhaustedError`` past its hash's end."""
        if depth >= len(key_hash):
            raise HashExhaustedError(
                f"more than max_bucket_size={self._max_bucket_size} keys share all "
                f"{len(key_hash)} hash bytes of {key!r}; use a longer hash_fn or a larger "
                "max_bucket_size"
            )
        return key_hash[depth]

    async def _materialize(self, pointer: Pointer) -> WriteNode:
        stored = await self._loader.load(pointer)
        slots = [dict(s) if type(s) is dict else s for s in stored]
        return WriteNode(slots, pointer, False)

    # -- lookups ------------------------------------------------------------------------

    async def find(self, key: str, key_hash: bytes) -> Pointer:
        """The pointer of ``key`` with the buffered changes (``root`` must be set)."""
        node = self.root
        assert node is not None
        depth = 0
        while True:
            slot = node.slots[self.slot(key_hash, depth, key)]
            if type(slot) is WriteNode:
                node = slot
                depth += 1
                continue
            if type(slot) is list:
                return await lookup_stored(self._loader, key, key_hash, slot[0], depth + 1)
            if slot is None or key not in slot:
                raise KeyNotFoundError(key)
            return slot[key]

    # -- insert and remove ------------------------------------------------------------------

    async def insert(self, key: str, key_hash: bytes, pointer: Pointer) -> None:
        """Map ``key`` to ``pointer`` (``root`` must be set)."""
        node = self.root
        assert node is not None
        depth = 0
        hash_len = len(key_hash)
        while True:
            # Nodes on the path are marked dirty on the way down. Should the insert stop
            # early (cancelled, or a full hash), a node is at worst saved again unchanged.
            node.dirty = True
            if depth >= hash_len:
                self.slot(key_hash, depth, key)  # raises HashExhaustedError
            index = key_hash[depth]
            slot = node.slots[index]
            kind = type(slot)
            if kind is dict:
                if key in slot or len(slot) < self._max_bucket_size:
                    slot[key] = pointer
                    return
                entries = dict(slot)
                entries[key] = pointer
                # Built aside and attached in one step, so a HashExhaustedError leaves
                # the map as it was.
                node.attach(index, self._build_subtree(entries, depth + 1))
                return
            if slot is None:
                node.slots[index] = {key: pointer}
                return
            if kind is list:
                # Loading may be cancelled; nothing has changed yet.
                child = await self._materialize(slot[0])
                node.attach(index, child)
                slot = child
            node = slot
            depth += 1

    def _build_subtree(self, entries: dict[str, Pointer], depth: int) -> WriteNode:
        """A new node holding ``entries`` (more than a bucket's worth) at ``depth``."""
        groups: dict[int, dict[str, Pointer]] = {}
        for key, pointer in entries.items():
            index = self.slot(self._hash_fn(key.encode("utf-8")), depth, key)
            groups.setdefault(index, {})[key] = pointer
        node = WriteNode(empty_slots(), None, True)
        for index, group in groups.items():
            if len(group) > self._max_bucket_size:
                node.attach(index, self._build_subtree(group, depth + 1))
            else:
                node.slots[index] = group
        return node

    async def remove(self, key: str, key_hash: bytes) -> None:
        """Unmap ``key`` (``root`` must be set); ``KeyNotFoundError`` if it is not there."""
        node = self.root
        assert node is not None
        path: list[WriteNode] = []
        indices: list[int] = []
        depth = 0
        while True:
            index = self.slot(key_hash, depth, key)
            slot = node.slots[index]
            path.append(node)
            indices.append(index)
            if type(slot) is WriteNode:
                node = slot
            elif type(slot) is list:
                child = await self._materialize(slot[0])
                node.attach(index, child)
                node = child
            elif slot is None or key not in slot:
                raise KeyNotFoundError(key)
            else:
                break
            depth += 1

        # Work out the new contents bottom-up without touching the tree: a node whose
        # subtree now holds at most max_bucket_size keys folds into its parent's slot.
        # Loads happen here, before any change, so cancellation or a failed load changes
        # nothing.
        replacement: Any = {k: v for k, v in path[-1].slots[indices[-1]].items() if k != key}
        level = len(path) - 1
        while level > 0:
            folded = await self._fold(path[level], indices[level], replacement)
            if folded is None:
                break
            replacement = folded
            level -= 1

        path[level].put(indices[level], replacement or None)
        for changed in path[: level + 1]:
            changed.dirty = True

    async def _fold(
        self, node: WriteNode, index: int, replacement: Any
    ) -> dict[str, Pointer] | None:
        """All entries of ``node`` (with slot ``index`` replaced) if they fit one bucket."""
        slots = list(node.slots)
        slots[index] = replacement
        return await self._collect(slots, self._max_bucket_size)

    async def _collect(self, slots: list[Any], limit: int) -> dict[str, Pointer] | None:
        """Every entry under ``slots``, or ``None`` as soon as there are more than ``limit``."""
        # Every child subtree holds at least one key, so count before loading anything: in
        # a canonical tree any child already puts a node over the limit.
        count = 0
        for slot in slots:
            if slot:
                count += len(slot) if type(slot) is dict else 1
        if count > limit:
            return None
        entries: dict[str, Pointer] = {}
        for slot in slots:
            if not slot:
                continue
            if type(slot) is dict:
                entries.update(slot)
            else:
                child = slot.slots if type(slot) is WriteNode else await self._loader.load(slot[0])
                collected = await self._collect(child, limit - len(entries))
                if collected is None:
                    return None
                entries.update(collected)
            if len(entries) > limit:
                return None
        return entries

    # -- flush --------------------------------------------------------------------------

    async def flush(self) -> Pointer:
        """Save the dirty nodes bottom-up, drop the tree; the id of the saved root.

        ``root`` must be set. Each node's children are saved before it, so when a node is
        encoded its child slots can be replaced, in place, by links to them: a saved child
        equals its link. A cancelled flush therefore leaves a valid, partly saved tree
        behind. The store's own ``flush()`` is the caller's to call.
        """
        tree = self.root
        assert tree is not None
        saved: list[tuple[WriteNode, int]] = []
        if tree.dirty:
            for level in _dirty_levels(tree):
                for start in range(0, len(level), _FLUSH_BATCH):
                    batch = level[start : start + _FLUSH_BATCH]
                    encoded = []
                    for node in batch:
                        slots = node.slots
                        for index, child in node.children.items():
                            slots[index] = [child.link]
                        node.children = {}
                        encoded.append(encode_node(slots))
                    links = await self._cas._save_many(encoded, "dag-cbor")
                    for node, data, link in zip(batch, encoded, links, strict=True):
                        node.link = link
                        node.dirty = False
                        saved.append((node, len(data)))
        await self._cas.flush()
        root = tree.link
        assert root is not None  # a clean node is a stored one
        self.root = None
        # The tree is gone, so its nodes' slots can serve as the read cache's copies.
        remember = self._loader.remember
        for node, size in saved:
            remember(node.link, node.slots, node_cost(size, node.slots))
        return root

    # -- traversal ------------------------------------------------------------------------

    async def iter_buckets(self) -> AsyncIterator[dict[str, Pointer]]:
        """Every bucket of the map with the buffered changes (``root`` must be set)."""
        assert self.root is not None
        stack = [self.root]
        stored: list[Pointer] = []
        while stack:
            node = stack.pop()
            for slot in node.slots:
                if slot is None:
                    continue
                kind = type(slot)
                if kind is dict:
                    yield slot
                elif kind is WriteNode:
                    stack.append(slot)
                else:
                    stored.append(slot[0])
        for pointer in stored:
            async for bucket in iter_buckets_stored(self._loader, pointer):
                yield bucket

    def nbytes(self) -> int:
        """Approximate bytes of memory the buffered nodes hold."""
        size = 0
        stack = [self.root] if self.root is not None else []
        while stack:
            node = stack.pop()
            size += node_cost(0, node.slots)
            stack.extend(node.children.values())
        return size


def _dirty_levels(root: WriteNode) -> list[list[WriteNode]]:
    """Dirty nodes grouped by height (leaves first), so children are saved before parents."""
    levels: list[list[WriteNode]] = []

    def visit(node: WriteNode) -> int:
        height = 0
        for child in node.children.values():
            if child.dirty:
                height = max(height, visit(child) + 1)
        if height == len(levels):
            levels.append([])
        levels[height].append(node)
        return height

    visit(root)  # recursion depth is the tree's depth: at most the hash length
    return levels
