"""Named fault points for crash tests: a test sets `LENDATA_TEST_FAULT=<point>` (or `<point>:<n>` for the n-th
time the point is reached) and the process SIGKILLs itself there, so a test can kill a build at exactly the
step it wants to check instead of at a random moment. Unset (always, outside tests), a point costs one dict
lookup.

Points: `shard_write` (a shard's bytes partly written, not yet renamed), `before_publish` (every shard and the
manifest written and fsynced, the version not yet renamed into view), `overwrite_exchanged` (an overwritten
version swapped into view, the old one not yet deleted), `after_publish` (the version visible, the dataset
lock not yet released), `generated` (every engine call made, nothing validated or committed).
"""

from __future__ import annotations

import os
import signal

ENV = "LENDATA_TEST_FAULT"
POINTS = ("shard_write", "before_publish", "overwrite_exchanged", "after_publish", "generated")
_seen: dict[str, int] = {}


def point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
