# Staging: the smallest fleet with the production shape (3 zones, quorums, N+1 not applied: floors only).
vpc_cidr                                = "10.50.0.0/16"
auth0_domain                            = "storm-staging.eu.auth0.com"
auth0_api_identifier                    = "https://api.staging.storm.chat"
chat_origins                            = ["https://chat.staging.storm.chat"]
gateway_max_instances                   = 12
gateway_connections_per_instance_target = 2000
deletion_protection                     = false
fleet_source                            = "hand-set: the floors of every role (terraform/README.md)"
fleet = {
  gateway          = { instance_type = "c7i.large", count = 3 }
  api              = { instance_type = "c7i.large", count = 3 }
  consumers        = { instance_type = "c7i.large", count = 3 }
  pulsar_broker    = { instance_type = "m7i.large", count = 3 }
  pulsar_bookie    = { instance_type = "m7i.large", count = 6 }
  pulsar_zookeeper = { instance_type = "m7i.large", count = 3 }
  hazelcast        = { instance_type = "m7i.large", count = 3 }
  cockroachdb      = { instance_type = "m7i.xlarge", count = 3 }
}
