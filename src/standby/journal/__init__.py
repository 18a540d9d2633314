"""The journal: records kept on disk in order until the peer has them.

:class:`Spool` is the on-disk, segmented, checksummed journal that carries captured changes
from the master's engine to its sender (and holds received changes on the replica while apply
is suspended). See :mod:`standby.journal.spool` for the format and the durability rules.
"""

from standby.journal.spool import (
    DEFAULT_SEGMENT_BYTES,
    MAX_RECORD_BYTES,
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    Spool,
    SpoolAhead,
    SpoolClosed,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
    SpoolGap,
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "MAX_RECORD_BYTES",
    "RECORD_HEADER_BYTES",
    "SEGMENT_HEADER_BYTES",
    "Spool",
    "SpoolAhead",
    "SpoolClosed",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolGap",
]
