"""Process-wide tuning for tenantry's long-running processes (consumers, relays, the API).

CPython's cycle collector now and then runs a full (oldest-generation) collection, which
visits every container object the process holds: for a worker that has imported its
application, the platform and the Kafka and database clients, about 150,000 of them,
nearly all created at start-up and alive until exit. Each such collection stops the event
loop; measured in ``bench/events.py``'s consumer (Kafka, 1,000 events/s, two cores shared
with the broker, PostgreSQL and the publishers): 180 ms of CPU and 310-625 ms of wall time,
long enough to push every event that arrived meanwhile past the p99.

:func:`freeze_startup_heap`, called once start-up is done, moves the objects alive then into
the collector's permanent generation (:func:`gc.freeze`): full collections visit only what
was created since. ``tenantry consume``, ``tenantry relay`` and ``tenantry up`` call it; a
process that runs a consumer or relay of its own (``platform.events.consumer(...).run()``)
should call it too, once its start-up is done.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect garbage, then exempt every object alive now from future cycle collections
    (:func:`gc.freeze`); returns how many objects are frozen.

    Frozen objects are still freed by reference counting; only one that later becomes part
    of an unreachable cycle is never reclaimed, which for start-up objects (modules, classes,
    settings, pools) does not happen in practice. Calling it again freezes what was created
    since; :func:`gc.unfreeze` undoes it."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
