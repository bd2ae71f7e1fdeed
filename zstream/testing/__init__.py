"""Real zstream brokers for tests of your own code.

A plain context manager, for any test runner::

    import zstream.testing

    with zstream.testing.cluster(brokers=3) as c:
        asyncio.run(exercise_my_app(c.bootstrap))  # Producer(c.bootstrap), ...

and a pytest plugin, loaded by the ``pytest11`` entry point once zstream is
installed, with the fixtures ``zstream_cluster`` (one broker) and
``zstream_cluster_factory`` (``zstream_cluster_factory(3)`` for three). Brokers are
``zstream broker`` processes on free ports of 127.0.0.1, with no etcd (one broker
runs embedded, several as a static cluster); each is stopped by PID afterwards.
`Cluster.kill`, `Cluster.restart` and `Cluster.wait_serving` are for failure tests.
The helpers block; from a coroutine, ``await asyncio.to_thread(c.restart, 1)``.
"""

from zstream.testing._cluster import Broker, Cluster, ClusterFactory, cluster

__all__ = ["Broker", "Cluster", "ClusterFactory", "cluster"]
