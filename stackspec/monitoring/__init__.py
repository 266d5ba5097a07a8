"""Monitoring as code: rules, Alertmanager config, dashboards, scrape config and the log pipeline.

Every module here is a pure render: stack settings in, text (or plain dicts) out. The Pulumi
component (infra/components/monitoring.py) and the local stack (localstack/prometheus.py) both use it.
"""
