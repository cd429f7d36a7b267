# The consumers (`storm serve consumers`: the persistence workers on Pulsar's shared `persistence`
# subscription) as their own group over three zones. No inbound port: they only pull from Pulsar.

resource "aws_security_group" "consumers" {
  name        = "${var.name}-consumers"
  description = "Consumers: no inbound traffic; out to Pulsar, Hazelcast, CockroachDB and HTTPS"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_egress_rule" "consumers_https" {
  security_group_id = aws_security_group.consumers.id
  description       = "HTTPS out through the NAT gateways: Datadog intake, packages"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "consumers_vpc" {
  for_each          = toset(["5701", "6651", "8443", "26257"])
  security_group_id = aws_security_group.consumers.id
  description       = "STORM's services inside the VPC, port ${each.value}"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
}

module "group" {
  source = "../node_group"

  name                       = "${var.name}-consumers"
  role                       = "consumers"
  environment                = var.environment
  instance_type              = var.instance_type
  desired_capacity           = var.instance_count
  subnet_ids                 = var.private_subnet_ids
  security_group_ids         = concat([aws_security_group.consumers.id], var.security_group_ids)
  termination_drain_seconds  = 60 # the workers finish and ack their batch on SIGTERM
  kms_key_arn                = var.kms_key_arn
  datadog_api_key_secret_arn = var.datadog_api_key_secret_arn
  secret_arns                = [var.storm.database_url_secret_arn, var.storm.ca_secret_arn]
  tags                       = var.tags

  role_script = templatefile("${path.module}/../node_group/storm_role.sh.tftpl", {
    role                     = "consumers"
    environment              = var.environment
    storm_version            = var.storm.version
    auth0_domain             = var.storm.auth0_domain
    auth0_audience           = var.storm.auth0_audience
    allowed_origins          = var.storm.allowed_origins
    pulsar_url               = var.storm.pulsar_url
    pulsar_admin_url         = var.storm.pulsar_admin_url
    pulsar_cluster           = var.storm.pulsar_cluster
    hazelcast_group          = var.storm.hazelcast_group
    hazelcast_cluster        = var.storm.hazelcast_cluster
    database_url_secret_arn  = var.storm.database_url_secret_arn
    ca_secret_arn            = var.storm.ca_secret_arn
    drain_timeout_s          = 20
    drain_reconnect_spread_s = 0
    publish_connections      = false
  })
}
