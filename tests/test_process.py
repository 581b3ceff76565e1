"""Process-wide tuning of long-running processes."""

from __future__ import annotations

import gc
import weakref

from tenantry.process import freeze_startup_heap


class _Node:
    me: _Node | None = None


def _tracked(target: object) -> bool:
    return any(o is target for o in gc.get_objects())


def test_freezing_exempts_what_is_alive_from_collections_and_collects_garbage_first() -> None:
    """Objects alive at the call leave the collector's generations (full collections no
    longer visit them); garbage that existed before the call is collected, not frozen."""
    gc.disable()  # only the call under test may collect the cycle
    alive = [object()]
    cycle = _Node()
    cycle.me = cycle
    garbage = weakref.ref(cycle)
    del cycle
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert not _tracked(alive)
        assert garbage() is None  # collected, not frozen
        created_after = [object()]
        assert _tracked(created_after)
    finally:
        gc.unfreeze()
        gc.enable()
    assert _tracked(alive)
