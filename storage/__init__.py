"""Segmented log storage: record batches, Raft entries on disk, recovery, retention.

This package imports no other zstream package.
"""
