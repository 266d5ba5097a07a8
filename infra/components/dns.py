"""DNS failover between the two sites: one Route53 health check per site, failover A records.

The active site's record is PRIMARY, the other SECONDARY; Route53 answers with the secondary while the
primary's health check fails (`failureThreshold` consecutive checks of the edge's `/healthz`, which
reflects gateway readiness). Each site's edge address comes from that site's stack outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stackspec.dns import DnsSettings


@dataclass
class DnsFailoverArgs:
    settings: DnsSettings
    site_addresses: dict[str, pulumi.Input[str]]  # site name -> edge IP address


class DnsFailover(pulumi.ComponentResource):
    health_check_ids: dict[str, pulumi.Output[str]]
    record_names: dict[str, pulumi.Output[str]]
    active_site: str

    def __init__(self, name: str, args: DnsFailoverArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("qwen-serving:dns:DnsFailover", name, None, opts)
        dns = args.settings
        self.health_check_ids = {}
        self.record_names = {}
        self.active_site = dns.active_site
        for site in dns.sites:
            check = aws.route53.HealthCheck(
                f"{name}-{site.name}",
                ip_address=args.site_addresses[site.name],
                fqdn=dns.hostname,  # sent as Host/SNI so the edge's TLS certificate matches
                port=dns.health_check_port,
                type="HTTPS",
                enable_sni=True,
                resource_path=dns.health_check_path,
                failure_threshold=dns.failure_threshold,
                request_interval=dns.request_interval,
                tags={"Name": f"qwen-serving {site.name}", "app.kubernetes.io/part-of": "qwen-serving"},
                opts=pulumi.ResourceOptions(parent=self),
            )
            role = "PRIMARY" if site.name == dns.active_site else "SECONDARY"
            record = aws.route53.Record(
                f"{name}-{site.name}",
                zone_id=dns.zone_id,
                name=dns.hostname,
                type="A",
                ttl=dns.ttl,
                records=[args.site_addresses[site.name]],
                set_identifier=site.name,
                failover_routing_policies=[aws.route53.RecordFailoverRoutingPolicyArgs(type=role)],
                health_check_id=check.id,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.health_check_ids[site.name] = check.id
            self.record_names[site.name] = record.fqdn
        self.register_outputs({"active_site": dns.active_site, "health_check_ids": self.health_check_ids})
