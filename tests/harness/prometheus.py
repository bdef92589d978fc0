"""A Prometheus configuration, and the parts of Prometheus' HTTP API the tests read."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.harness.processes import Process
from tests.harness.rawhttp import http_get
from tests.harness.waiting import wait_for

PROMETHEUS = Path(os.environ.get("PUSHPROX_E2E_PROMETHEUS", "/usr/bin/prometheus"))
NODE_EXPORTER = Path(
    os.environ.get("PUSHPROX_E2E_NODE_EXPORTER", "/usr/bin/prometheus-node-exporter")
)
# Node exporter collectors that fail or are slow in containers and CI; the rest stay on so
# that the proxied scrape carries a realistic body (hundreds of series, some kB gzipped).
NODE_EXPORTER_DISABLED = ("systemd", "hwmon", "thermal_zone", "rapl", "powersupplyclass", "wifi")


def parse_metric(text: str, name: str) -> list[float]:
    """Values of every sample of metric ``name`` in a text exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)
    return [float(value) for value in pattern.findall(text)]


def metric_names_in_exposition(text: str) -> set[str]:
    """Metric names of the samples in a text exposition (histogram/summary suffixes included)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def prometheus_config(
    scrape_configs: Sequence[Mapping[str, Any]],
    *,
    scrape_interval: str = "1s",
    scrape_timeout: str = "1s",
) -> str:
    """A Prometheus configuration file (JSON is YAML, so no YAML library is needed)."""
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_timeout,
            "evaluation_interval": "1m",
        },
        "scrape_configs": list(scrape_configs),
    }
    return json.dumps(config, indent=2) + "\n"


def proxied_job(
    name: str, targets: Sequence[str], proxy_port: int, **settings: Any
) -> dict[str, Any]:
    """A static scrape job whose scrapes go through the pushprox proxy."""
    return {
        "job_name": name,
        "proxy_url": f"http://127.0.0.1:{proxy_port}/",
        "static_configs": [{"targets": list(targets)}],
        **settings,
    }


def direct_job(name: str, targets: Sequence[str], **settings: Any) -> dict[str, Any]:
    """A static scrape job that Prometheus scrapes itself."""
    return {"job_name": name, "static_configs": [{"targets": list(targets)}], **settings}


class Prometheus:
    """A running Prometheus and the parts of its HTTP API the tests read."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful answer of /api/v1/PATH."""
        query = urllib.parse.urlencode(params)
        result = http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        payload = result.json()
        if result.status != 200 or payload.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params}: {result.status} {payload}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector query: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def by_instance(self, expr: str) -> dict[str, float]:
        """Instant query, keyed by the instance label."""
        return {
            sample["metric"].get("instance", ""): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def targets(self, job: str) -> list[dict[str, Any]]:
        """Active targets of one scrape pool, as /api/v1/targets shows them."""
        data = self.api("targets", state="active")
        return [t for t in data["activeTargets"] if t["scrapePool"] == job]

    def target(self, job: str, instance: str) -> dict[str, Any]:
        """One active target of a job, as /api/v1/targets shows it."""
        for target in self.targets(job):
            if target["labels"].get("instance") == instance:
                return target
        raise AssertionError(f"no target {instance} in job {job}")

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of every series matching the selector ever stored (not only the latest)."""
        return list(self.api("series", **{"match[]": match}))

    def metric_names(self, job: str) -> set[str]:
        """Every metric name Prometheus has stored for a job."""
        return set(self.api("label/__name__/values", **{"match[]": f'{{job="{job}"}}'}))

    def wait_up(
        self,
        job: str,
        instances: Iterable[str] | Mapping[str, float],
        *,
        timeout: float = 20.0,
        value: float = 1.0,
    ) -> dict[str, float]:
        """
        Wait until ``up`` of the job is ``value`` for exactly these instances.

        ``instances`` may also map each instance to its own expected value.
        """
        if isinstance(instances, Mapping):
            expected = {instance: float(up) for instance, up in instances.items()}
        else:
            expected = {instance: value for instance in instances}

        def check() -> dict[str, float] | None:
            ups = self.by_instance(f'up{{job="{job}"}}')
            return ups if ups == expected else None

        return wait_for(check, timeout=timeout, interval=0.2,
                        what=f"up{{job={job!r}}} == {expected}", watch=[self.process])

    def wait_health(
        self, job: str, instance: str, health: str, *, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Wait until a target's health ("up"/"down") in /api/v1/targets; return the target."""

        def check() -> dict[str, Any] | None:
            target = self.target(job, instance)
            return target if target["health"] == health else None

        return wait_for(check, timeout=timeout, interval=0.2,
                        what=f"{job}/{instance} health {health}", watch=[self.process])
