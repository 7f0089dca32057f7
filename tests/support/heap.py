"""Python heap held by some files' allocations between two tracemalloc snapshots (the memory
tests' measure of what an idle socket keeps)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable


def held(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, files: Iterable[str]) -> int:
    """Bytes allocated between the snapshots, and still held, by code in `files`."""
    wanted = set(files)
    return sum(
        s.size_diff
        for s in after.compare_to(before, "filename")
        if s.traceback[0].filename in wanted
    )
