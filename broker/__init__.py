"""The zstream server process: client front end, partition manager, controller,
etcd discovery, configuration and the ``zstream`` CLI.

Nothing imports ``broker``.
"""

from zstream.broker._config import BrokerConfig, ConfigError, PeerSpec, load_config

__all__ = ["BrokerConfig", "ConfigError", "PeerSpec", "load_config"]
