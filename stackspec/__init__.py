"""The settings contract: the typed stack model, the capacity model and every pure renderer.

A leaf package. It imports nothing else of this repository, with one documented exception:
`app.gateway.settings`, the gateway's own settings class (which itself imports nothing of ours). The
stack model builds an instance of that class from the stack file, so every check the gateway makes at
start-up runs at `make plan`, and the gateway's environment is derived from that instance mechanically.

    stackspec.settings      the site stack model (sections, secrets, cross-tier checks)
    stackspec.dns           the `global` stack model (DNS failover) and its agreement with the site stacks
    stackspec.stackfile     reading stacks/Pulumi.<stack>.yaml the way the Pulumi CLI hands it over
    stackspec.capacity      does the model fit one replica's GPUs
    stackspec.versions      the one vLLM version (production image tag, CPU build, argument parser)
    stackspec.render        nginx.conf, redis.conf, vLLM arguments, the gateway's environment
    stackspec.monitoring    Prometheus rules and scrape config, Alertmanager, dashboards, Fluent Bit

Everything that depends on it (infra/, localstack/, policies/, tests/) points here, never the other way;
tests/architecture/test_imports.py keeps it so.
"""
