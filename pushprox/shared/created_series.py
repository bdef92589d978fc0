# -*- test-case-name: tests.test_metrics -*-
"""
Whether prometheus-client writes ``_created`` series in this process.

``PROMETHEUS_DISABLE_CREATED_SERIES`` and ``prometheus_client.disable_created_metrics()``
decide it, and the library keeps that choice in a private name (``_use_created`` of
``prometheus_client.metrics``) with no public getter.  Rather than read the private
name, a counter of the library's own, in no registry, is asked what it writes: public
API only, at a few microseconds per collection, so that pushprox's own families
(``pushprox.shared.metrics``) follow the library's choice.  The behaviour relied on (a
fresh ``Counter`` writes a ``_created`` sample exactly when the series are on) is checked
by ``tests/test_metrics.py``'s ``test_created_series_follow_prometheus_client``.
"""

from __future__ import annotations

import prometheus_client


def created_series_wanted() -> bool:
    """Whether prometheus-client writes ``_created`` series now (see the module docstring)."""
    probe = prometheus_client.Counter("pushprox_probe", "", registry=None)
    return any(sample.name.endswith("_created")
               for family in probe.collect() for sample in family.samples)
