"""Change capture: what changed below a root directory, as events on relative paths.

Tier 1, *watch* (inotify), lives in :mod:`standby.capture.watch`. Events are hints for the
consumer, which looks at the file system for the truth; :class:`Overflow` asks it to rescan.
"""

from .watch import (
    PAIR_WAIT,
    Changed,
    Event,
    ExcludedFn,
    Moved,
    Overflow,
    Removed,
    Watcher,
    WatchError,
)

__all__ = [
    "PAIR_WAIT",
    "Changed",
    "Event",
    "ExcludedFn",
    "Moved",
    "Overflow",
    "Removed",
    "WatchError",
    "Watcher",
]
