"""One answer to "is this a CI run?", shared by every test and fixture that asks."""

from __future__ import annotations

import os

__all__ = ["on_ci"]

_TRUE = {"1", "true", "yes", "on"}


def on_ci() -> bool:
    """True when ``CI`` is set to a true value (GitHub, GitLab and our .ci/run set ``true``).

    Under CI nothing the suite depends on may skip: a missing Kubo binary or py-hamt venv
    fails the tests that need them instead.
    """
    return os.environ.get("CI", "").strip().lower() in _TRUE
