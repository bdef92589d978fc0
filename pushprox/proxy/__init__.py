"""
The proxy's side: the HTTP server Prometheus and the clients talk to, the coordinator that
pairs scrapes with polls and pushes, the status page, and cluster mode (``cluster``).
"""
