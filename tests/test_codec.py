"""The node codec writes exactly what dag-cbor writes, and reads only real nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import dag_cbor
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiformats import CID, multihash

from anyhamt import CorruptNodeError, Link
from anyhamt._codec import (
    DAG_CBOR,
    EMPTY_NODE_BYTES,
    RAW,
    decode_node,
    empty_slots,
    encode_node,
    make_link,
    to_public,
    verify_block,
)
from anyhamt._errors import BlockVerificationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dag_cbor import IPLDKind

EMPTY_NODE_CID = "bafyr4igb3js3dqlnsvmbi533lhghfet3l4r35vbi7mlrvxjb6f3n5wkc3m"


def reference_encode(slots: list[object]) -> bytes:
    """py-hamt's encoding: dag_cbor over the IPLD form of the node."""
    ipld: list[object] = []
    for slot in slots:
        if slot is None:
            ipld.append({})
        elif isinstance(slot, dict):
            ipld.append({k: to_public(v) for k, v in slot.items()})
        else:
            ipld.append([to_public(slot[0])])  # type: ignore[index]
    return bytes(dag_cbor.encode(cast("IPLDKind", ipld)))


def test_empty_node_bytes_and_cid() -> None:
    assert len(EMPTY_NODE_BYTES) == 259
    assert encode_node(empty_slots()) == EMPTY_NODE_BYTES == reference_encode(empty_slots())
    assert str(make_link(DAG_CBOR, EMPTY_NODE_BYTES)) == EMPTY_NODE_CID
    assert decode_node(EMPTY_NODE_BYTES) == empty_slots()


pointers = st.one_of(
    st.binary(min_size=34, max_size=34).map(lambda b: b"\x1e\x20" + b[2:]),  # InMemoryCAS ids
    st.binary(min_size=1, max_size=300).map(lambda b: make_link(RAW, b)),
    st.binary(min_size=1, max_size=300).map(lambda b: make_link(DAG_CBOR, b)),
)
buckets = st.dictionaries(st.text(max_size=40), pointers, min_size=1, max_size=12)
slot_values = st.one_of(buckets, pointers.map(lambda p: [p]))


def _place(filled: Mapping[int, object]) -> list[object]:
    slots = empty_slots()
    for index, value in filled.items():
        slots[index] = value
    return slots


# Sparse, like real nodes (and the reference encoder is slow per CID).
nodes = st.dictionaries(st.integers(0, 255), slot_values, max_size=24).map(_place)


@given(nodes)
def test_encoding_matches_dag_cbor_and_round_trips(slots: list[object]) -> None:
    encoded = encode_node(slots)
    assert encoded == reference_encode(slots)
    assert decode_node(encoded) == slots


@given(nodes)
def test_decoded_cids_are_links_and_bytes_stay_bytes(slots: list[object]) -> None:
    for decoded, original in zip(decode_node(encode_node(slots)), slots, strict=True):
        if isinstance(original, dict):
            assert isinstance(decoded, dict)
            for key, value in original.items():
                assert type(decoded[key]) is type(value)
        elif isinstance(original, list):
            assert type(decoded[0]) is type(original[0])


def test_custom_store_ids_go_through_the_general_codec() -> None:
    slots = empty_slots()
    slots[3] = {"a": "string-id", "b": 42}
    slots[9] = ["another-id"]
    encoded = encode_node(slots)
    assert encoded == reference_encode(slots)
    assert decode_node(encoded) == slots


def test_cids_in_nodes_decode_as_links_even_via_the_general_codec() -> None:
    link = make_link(RAW, b"x")
    slots = empty_slots()
    slots[0] = {"a": link, "b": 7}  # the int forces the general path
    decoded = decode_node(encode_node(slots))
    assert type(decoded[0]["a"]) is Link


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid dag-cbor"),
        (b"\xa0", "256 slots"),
        (EMPTY_NODE_BYTES[:-1], "ends after"),
        (EMPTY_NODE_BYTES + b"\xa0", "trailing"),
        (bytes(dag_cbor.encode([{}] * 255)), "256 slots"),
        (bytes(dag_cbor.encode([{}] * 255 + [7])), "neither a bucket nor a link"),
        (bytes(dag_cbor.encode([{}] * 255 + [[1, 2]])), "neither a bucket nor a link"),
        # A float id sends decoding down the general path, which checks the same grammar.
        (
            bytes(dag_cbor.encode(cast("IPLDKind", [{"a": 1.5}] + [{}] * 254 + [[1, 2]]))),
            "one-element array",
        ),
        (bytes(dag_cbor.encode({"not": "a node"})), "256 slots"),
        (b"\x99\x01\x00" + b"\xa1\x61\xff\x41\x00" + b"\xa0" * 255, "malformed"),
        (bytes(dag_cbor.encode([{}] * 255 + [[CID.decode(EMPTY_NODE_CID)]]))[:-5], "end inside"),
    ],
)
def test_corrupt_node_bytes(data: bytes, message: str) -> None:
    with pytest.raises(CorruptNodeError, match=message):
        decode_node(data)


def test_verify_block() -> None:
    link = make_link(RAW, b"content")
    verify_block(link, b"content")
    with pytest.raises(BlockVerificationError, match="does not match"):
        verify_block(link, b"c0ntent")
    # CIDs from elsewhere (a CAR, a gateway) may use sha2-256.
    sha = Link(bytes(CID("base32", 1, "raw", multihash.digest(b"hello world", "sha2-256"))))
    verify_block(sha, b"hello world")
    with pytest.raises(BlockVerificationError):
        verify_block(sha, b"hello world!")


def test_link_text_forms() -> None:
    link = make_link(DAG_CBOR, b"abc")
    text = str(link)
    assert text.startswith("bafyr4i")
    assert Link.parse(text) == link
    cid = link.to_cid()
    assert str(cid) == text
    assert Link.parse(cid.encode("base58btc")) == link
