"""The public surface: py-hamt's names, plus ours, explicitly exported and sorted."""

from __future__ import annotations

import types

import anyhamt
import anyhamt.cas

PY_HAMT_NAMES = {
    "HAMT",
    "blake3_hashfn",
    "ContentAddressedStore",
    "InMemoryCAS",
    "KuboCAS",
    "SimpleEncryptedZarrHAMTStore",
    "ZarrHAMTStore",
}


def _public(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"annotations"}
    }


def test_all_is_sorted_and_complete() -> None:
    for module in (anyhamt, anyhamt.cas):
        # Names loaded on first access (the Zarr stores) are in __all__ before they are in
        # the module's namespace.
        lazy: frozenset[str] = getattr(module, "_ZARR_NAMES", frozenset())
        assert module.__all__ == sorted(module.__all__), module.__name__
        assert set(module.__all__) == _public(module) | lazy, module.__name__


def test_py_hamt_names_are_here() -> None:
    assert set(anyhamt.__all__) >= PY_HAMT_NAMES


def test_exported_objects_say_they_are_anyhamt_s() -> None:
    for name in anyhamt.__all__:
        obj = getattr(anyhamt, name)
        if hasattr(obj, "__module__"):
            assert obj.__module__.startswith("anyhamt"), name
