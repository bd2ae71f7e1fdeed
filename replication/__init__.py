"""Raft replication: a pure core, the durable Raft log, the ZeroMQ peer transport
and the multi-Raft host.

Depends on ``storage`` only.
"""
