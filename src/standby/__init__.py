"""standby: real-time replication and automatic failover."""

__version__ = "0.1.0"
