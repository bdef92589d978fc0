"""
Cluster mode: several proxy replicas behind a load balancer, with Redis as the routing table.

Imported only with ``--redis``.  ``routes`` keeps the shared table (which replica holds
each client's polls, the clients' labels, the live replicas), ``forwarding`` carries a
scrape or a push to the replica that can answer it, ``coordinator`` decides where each
scrape goes (``ClusterCoordinator`` wraps the single-process ``Coordinator``), and
``service`` runs the heartbeat and the drain on shutdown.
"""
