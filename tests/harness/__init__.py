"""
What the tests that use real sockets and real processes share.

- ``waiting``: free ports, and waiting with a deadline for something a real process or
  socket does (synchronously, or on the reactor).
- ``processes``: programs started by a test (foreground or ``twistd`` daemons), their
  logs, and stopping them all whatever happens.
- ``rawhttp``: HTTP requests written as bytes and responses read with ``pushprox.shared.wire``,
  over a blocking socket or on the reactor.
- ``exporter``: starting ``exporter_program.py``, a small exporter (standard library
  only, run as a script) serving given pages or a metric naming itself.
- ``prometheus``: a Prometheus configuration and the parts of its HTTP API tests read.
- ``containers``: the ``Containerfile``'s images built with podman (on a base image made
  with debootstrap when no registry is reachable) and run as processes of a test.
- ``stack``: the processes of one test (proxy, clients, exporters, Prometheus), started on
  free ports and all stopped at its end.

Nothing here knows about a particular test, nor about pytest.
"""
