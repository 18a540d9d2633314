"""High availability: Is Alive checks, workloads, the pure decide() core, arbiters and
redirection. The controller that ties them to an engine's scenarios lives in the engine.

Modules (each owns one concern; see their docstrings): ``view``/``decide``/``actions`` (pure),
``checks`` (Is Alive probes), ``workload`` (what a switchover starts and stops), ``redirect``
(service IP, DNS, user script), ``arbiter`` (peer, witness, etcd).
"""
