"""Memoising derived data per array object."""

from __future__ import annotations


def cached_per_array(store: dict, array, make, *extra, limit: int | None = 8):
    """``make()`` computed once per (array object, ``extra``) in ``store``. The entry holds the
    array, so its id, the key, cannot be reused by another object while cached. ``limit`` bounds
    the entries (the store is emptied when full); None keeps all (e.g. for one shard's lifetime)."""
    key = (id(array), *extra)
    hit = store.get(key)
    if hit is None or hit[0] is not array:
        if limit is not None and len(store) >= limit:
            store.clear()
        hit = store[key] = (array, make())
    return hit[1]
