"""End-to-end tests: a real Prometheus scrapes real exporters through real pushprox processes."""
