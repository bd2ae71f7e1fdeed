"""The zstream server process: client front end, partition manager, controller,
etcd discovery, configuration and the ``zstream`` CLI.

Nothing imports ``broker``.
"""
