"""Protocol errors, named by direction (who is at fault)."""


class ProtocolError(Exception):
    """Abstract root: the session cannot go on."""


class LocalProtocolError(ProtocolError):
    """*We* tried to build or send something illegal: a bug in our code."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal (malformed, oversized, out of order): end the session."""
