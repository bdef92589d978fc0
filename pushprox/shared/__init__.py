"""
What both programs share: the protocol's vocabulary (``wire``), settings and their parsers,
the environment, logs, metrics, TLS, files re-read on SIGHUP, the programs' common frame,
and the places where pushprox relies on Twisted beyond its interfaces.
"""
