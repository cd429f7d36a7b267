# Pulsar over three zones: ZooKeeper (one per zone), bookies (at least two per zone, rack = zone), brokers
# behind an internal Network Load Balancer (6651 binary TLS, 8443 admin TLS, passed through to the brokers).
#
# Zone loss (checked by tests/unit/test_terraform.py): rack-aware placement puts each entry's write_quorum
# copies in different zones, so a zone holds at most one copy; with ack_quorum >= 2 every acknowledged entry
# keeps a copy in a surviving zone, the surviving zones still hold write_quorum - 1 >= ack_quorum bookies of
# every ensemble so writes go on, and the remaining bookies (>= 4) still form new ensembles of 3.

locals {
  bookies_per_zone = var.bookie.count / 3
  quorum_settings = {
    managedLedgerDefaultEnsembleSize                 = var.ensemble_size
    managedLedgerDefaultWriteQuorum                  = var.write_quorum
    managedLedgerDefaultAckQuorum                    = var.ack_quorum
    bookkeeperClientRackawarePolicyEnabled           = true
    bookkeeperClientMinNumRacksPerWriteQuorum        = 2
    bookkeeperClientEnforceMinNumRacksPerWriteQuorum = true
    # What STORM's adapter relies on (docs/operations.md, "Pulsar"):
    managedLedgerMaxEntriesPerLedger          = 50000
    managedLedgerMinLedgerRolloverTimeMinutes = 0
    brokerDeleteInactiveTopicsEnabled         = false
    brokerDeduplicationEnabled                = false
    systemTopicEnabled                        = false
    topicLevelPoliciesEnabled                 = false
    allowAutoTopicCreation                    = true
    allowAutoTopicCreationType                = "non-partitioned"
    forceDeleteTenantAllowed                  = true
    forceDeleteNamespaceAllowed               = true
  }
  zk_connect = "zk.${var.name}.internal:2181"
}

check "quorums_survive_a_zone" {
  assert {
    condition     = var.write_quorum <= var.ensemble_size && var.ack_quorum <= var.write_quorum - 1 && var.bookie.count - local.bookies_per_zone >= var.ensemble_size
    error_message = "Pulsar quorums do not survive a zone loss (need ack <= write - 1, write <= ensemble <= bookies outside one zone)."
  }
}

resource "aws_security_group" "zookeeper" {
  name        = "${var.name}-pulsar-zookeeper"
  description = "ZooKeeper: 2181 from brokers and bookies, 2888/3888 between members"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group" "bookie" {
  name        = "${var.name}-pulsar-bookie"
  description = "Bookies: 3181 from brokers and other bookies (auto-recovery)"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group" "broker" {
  name        = "${var.name}-pulsar-broker"
  description = "Brokers: 6651/8443 (TLS) from STORM's processes and the internal NLB"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group" "nlb" {
  name        = "${var.name}-pulsar-nlb"
  description = "Internal Pulsar NLB: 6651/8443 from STORM's processes"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

locals {
  # (security group, port, source security group) for every allowed flow, nothing else.
  ingress = concat(
    [for p in [2181] : { sg = "zookeeper", port = p, from = aws_security_group.broker.id }],
    [for p in [2181] : { sg = "zookeeper", port = p, from = aws_security_group.bookie.id }],
    [for p in [2181, 2888, 3888] : { sg = "zookeeper", port = p, from = aws_security_group.zookeeper.id }],
    [{ sg = "bookie", port = 3181, from = aws_security_group.broker.id }],
    [{ sg = "bookie", port = 3181, from = aws_security_group.bookie.id }],
    [for p in [6651, 8443] : { sg = "broker", port = p, from = aws_security_group.broker.id }],
    [for p in [6651, 8443] : { sg = "broker", port = p, from = aws_security_group.nlb.id }],
    flatten([for c in var.client_security_group_ids : [for p in [6651, 8443] : { sg = "broker", port = p, from = c }]]),
    flatten([for c in var.client_security_group_ids : [for p in [6651, 8443] : { sg = "nlb", port = p, from = c }]]),
    [{ sg = "nlb", port = 8443, from = aws_security_group.bookie.id }], # a bookie names its rack (zone) at start
  )
  groups = {
    zookeeper = aws_security_group.zookeeper.id
    bookie    = aws_security_group.bookie.id
    broker    = aws_security_group.broker.id
    nlb       = aws_security_group.nlb.id
  }
}

resource "aws_vpc_security_group_ingress_rule" "this" {
  for_each                     = { for r in local.ingress : "${r.sg}-${r.port}-${r.from}" => r }
  security_group_id            = local.groups[each.value.sg]
  description                  = "Pulsar ${each.value.sg} port ${each.value.port}"
  referenced_security_group_id = each.value.from
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = { for k, v in local.groups : k => v if k != "nlb" }
  security_group_id = each.value
  description       = "HTTPS out through the NAT gateways: Datadog intake, Pulsar release download"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "internal" {
  for_each = {
    "zookeeper-zookeeper-2888" = { sg = "zookeeper", to = "zookeeper", port = 2888 }
    "zookeeper-zookeeper-3888" = { sg = "zookeeper", to = "zookeeper", port = 3888 }
    "bookie-zookeeper-2181"    = { sg = "bookie", to = "zookeeper", port = 2181 }
    "bookie-bookie-3181"       = { sg = "bookie", to = "bookie", port = 3181 }
    "broker-zookeeper-2181"    = { sg = "broker", to = "zookeeper", port = 2181 }
    "broker-bookie-3181"       = { sg = "broker", to = "bookie", port = 3181 }
    "broker-broker-6651"       = { sg = "broker", to = "broker", port = 6651 }
    "broker-broker-8443"       = { sg = "broker", to = "broker", port = 8443 }
    "bookie-nlb-8443"          = { sg = "bookie", to = "nlb", port = 8443 }
    "nlb-broker-6651"          = { sg = "nlb", to = "broker", port = 6651 }
    "nlb-broker-8443"          = { sg = "nlb", to = "broker", port = 8443 }
  }
  security_group_id            = local.groups[each.value.sg]
  description                  = "Pulsar ${each.value.sg} to ${each.value.to} port ${each.value.port}"
  referenced_security_group_id = local.groups[each.value.to]
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
}

# ZooKeeper members find each other by a private DNS name per member, maintained by their bootstrap.
resource "aws_route53_zone" "internal" {
  name = "${var.name}.internal"
  vpc {
    vpc_id = var.vpc_id
  }
  tags = var.tags
  #checkov:skip=CKV2_AWS_38:DNSSEC signing is not available for private hosted zones
  #checkov:skip=CKV2_AWS_39:query logging of a private zone holding three ZooKeeper names adds nothing
}

resource "aws_lb" "this" {
  name                             = "${var.name}-pulsar"
  load_balancer_type               = "network"
  internal                         = true
  subnets                          = var.private_subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true # lookups land on any broker; the client then talks to the topic's owner
  enable_deletion_protection       = true
  tags                             = var.tags
  #checkov:skip=CKV_AWS_91:internal TCP pass-through; brokers log connections
}

resource "aws_lb_target_group" "broker" {
  for_each             = toset(["6651", "8443"])
  name                 = "${var.name}-pulsar-${each.value}"
  port                 = tonumber(each.value)
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    protocol = "TCP"
    interval = 10
  }

  tags = var.tags
}

resource "aws_lb_listener" "broker" {
  for_each          = aws_lb_target_group.broker
  load_balancer_arn = aws_lb.this.arn
  port              = tonumber(each.key)
  protocol          = "TCP" # TLS is the brokers' own (6651, 8443): end to end to the broker
  default_action {
    type             = "forward"
    target_group_arn = each.value.arn
  }
  tags = var.tags
  #checkov:skip=CKV_AWS_2:TLS pass-through: the brokers terminate TLS, the NLB only forwards TCP
  #checkov:skip=CKV2_AWS_74:TLS pass-through: the brokers terminate TLS with their own policy
}

module "zookeeper" {
  source = "../node_group"

  name                       = "${var.name}-pulsar-zookeeper"
  role                       = "pulsar-zookeeper"
  environment                = var.environment
  instance_type              = var.zookeeper.instance_type
  desired_capacity           = var.zookeeper.count
  subnet_ids                 = var.private_subnet_ids
  security_group_ids         = [aws_security_group.zookeeper.id]
  data_volume_gb             = 20
  kms_key_arn                = var.kms_key_arn
  datadog_api_key_secret_arn = var.datadog_api_key_secret_arn
  secret_arns                = [var.tls_secret_arn]
  tags                       = var.tags
  role_script = templatefile("${path.module}/pulsar.sh.tftpl", {
    component      = "zookeeper", version = var.pulsar_version, cluster = var.cluster_name, zk_connect = local.zk_connect
    zone_id        = aws_route53_zone.internal.zone_id, domain = aws_route53_zone.internal.name, settings = {}
    tls_secret_arn = var.tls_secret_arn, broker_url = ""
  })
}

module "bookie" {
  source = "../node_group"

  name                       = "${var.name}-pulsar-bookie"
  role                       = "pulsar-bookie"
  environment                = var.environment
  instance_type              = var.bookie.instance_type
  desired_capacity           = var.bookie.count
  subnet_ids                 = var.private_subnet_ids
  security_group_ids         = [aws_security_group.bookie.id]
  data_volume_gb             = var.bookie.volume_gb
  kms_key_arn                = var.kms_key_arn
  datadog_api_key_secret_arn = var.datadog_api_key_secret_arn
  secret_arns                = [var.tls_secret_arn]
  tags                       = var.tags
  role_script = templatefile("${path.module}/pulsar.sh.tftpl", {
    component      = "bookie", version = var.pulsar_version, cluster = var.cluster_name, zk_connect = local.zk_connect
    zone_id        = aws_route53_zone.internal.zone_id, domain = aws_route53_zone.internal.name, settings = {}
    tls_secret_arn = var.tls_secret_arn, broker_url = "https://${aws_lb.this.dns_name}:8443"
  })
}

module "broker" {
  source = "../node_group"

  name                       = "${var.name}-pulsar-broker"
  role                       = "pulsar-broker"
  environment                = var.environment
  instance_type              = var.broker.instance_type
  desired_capacity           = var.broker.count
  subnet_ids                 = var.private_subnet_ids
  security_group_ids         = [aws_security_group.broker.id]
  target_group_arns          = [for tg in aws_lb_target_group.broker : tg.arn]
  termination_drain_seconds  = 120 # topics are unloaded to other brokers before the broker stops
  kms_key_arn                = var.kms_key_arn
  datadog_api_key_secret_arn = var.datadog_api_key_secret_arn
  secret_arns                = [var.tls_secret_arn]
  tags                       = var.tags
  role_script = templatefile("${path.module}/pulsar.sh.tftpl", {
    component      = "broker", version = var.pulsar_version, cluster = var.cluster_name, zk_connect = local.zk_connect
    zone_id        = aws_route53_zone.internal.zone_id, domain = aws_route53_zone.internal.name, settings = local.quorum_settings
    tls_secret_arn = var.tls_secret_arn, broker_url = "https://${aws_lb.this.dns_name}:8443"
  })
}

# Each ZooKeeper member publishes its own name (zk1..zk3) in the private zone, and nothing else.
data "aws_iam_policy_document" "zookeeper_dns" {
  statement {
    actions   = ["route53:ChangeResourceRecordSets"]
    resources = [aws_route53_zone.internal.arn]
  }
}

resource "aws_iam_role_policy" "zookeeper_dns" {
  name   = "publish-own-name"
  role   = module.zookeeper.role_name
  policy = data.aws_iam_policy_document.zookeeper_dns.json
}
