# CockroachDB self-managed on EC2, one share of the nodes per zone, each started with
# --locality=region=<region>,zone=<zone>: with 3 replicas (the default) CockroachDB puts each replica of a
# range in a different zone, so a zone loss leaves a Raft majority of every range. The database's survival
# goal (zone) is set by `storm migrate --regions <region> --survive zone` after `cockroach init`
# (terraform/README.md, "Order"). Alternative: CockroachDB Cloud (Dedicated or Standard) in the same
# region, reached over PrivateLink; then drop this module and point the database_url secret there.

data "aws_region" "current" {}

resource "aws_security_group" "node" {
  name        = "${var.name}-cockroachdb"
  description = "CockroachDB: SQL 26257 from STORM's processes, the NLB and other nodes"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group" "nlb" {
  name        = "${var.name}-cockroachdb-nlb"
  description = "Internal CockroachDB NLB: SQL from STORM's processes"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "node_from" {
  for_each                     = merge({ for i, c in var.client_security_group_ids : "client${i}" => c }, { nlb = aws_security_group.nlb.id, self = aws_security_group.node.id })
  security_group_id            = aws_security_group.node.id
  description                  = "SQL and inter-node traffic (${each.key})"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 26257
  to_port                      = 26257
}

resource "aws_vpc_security_group_ingress_rule" "nlb_from_clients" {
  for_each                     = { for i, c in var.client_security_group_ids : "client${i}" => c }
  security_group_id            = aws_security_group.nlb.id
  description                  = "SQL from STORM's processes"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 26257
  to_port                      = 26257
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_nodes" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "To the nodes"
  referenced_security_group_id = aws_security_group.node.id
  ip_protocol                  = "tcp"
  from_port                    = 26257
  to_port                      = 26257
}

resource "aws_vpc_security_group_egress_rule" "node_to_nodes" {
  security_group_id            = aws_security_group.node.id
  description                  = "Other nodes (Raft, gossip)"
  referenced_security_group_id = aws_security_group.node.id
  ip_protocol                  = "tcp"
  from_port                    = 26257
  to_port                      = 26257
}

resource "aws_vpc_security_group_egress_rule" "node_https" {
  security_group_id = aws_security_group.node.id
  description       = "HTTPS out: EC2 API (peers), Datadog intake, the CockroachDB release"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_lb" "this" {
  name                             = "${var.name}-crdb"
  load_balancer_type               = "network"
  internal                         = true
  subnets                          = var.private_subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = true
  tags                             = var.tags
  #checkov:skip=CKV_AWS_91:internal TCP pass-through; the nodes log SQL sessions
}

resource "aws_lb_target_group" "sql" {
  name                 = "${var.name}-crdb"
  port                 = 26257
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    protocol = "HTTPS"
    port     = "8080"
    path     = "/health?ready=1" # not ready while draining: out of rotation first
  }

  tags = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "health_from_nlb" {
  security_group_id            = aws_security_group.node.id
  description                  = "Readiness checks of the NLB (HTTP console port, TLS)"
  referenced_security_group_id = aws_security_group.nlb.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

resource "aws_vpc_security_group_egress_rule" "nlb_health" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "Readiness checks to the nodes"
  referenced_security_group_id = aws_security_group.node.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

resource "aws_lb_listener" "sql" {
  load_balancer_arn = aws_lb.this.arn
  port              = 26257
  protocol          = "TCP" # TLS end to end: the nodes terminate it (certificates in tls_secret_arn)
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.sql.arn
  }
  tags = var.tags
  #checkov:skip=CKV_AWS_2:TLS pass-through to the nodes, which require TLS for every SQL connection
  #checkov:skip=CKV2_AWS_74:TLS pass-through: the nodes terminate TLS
}

module "group" {
  source = "../node_group"

  name                       = "${var.name}-cockroachdb"
  role                       = "cockroachdb"
  environment                = var.environment
  instance_type              = var.instance_type
  desired_capacity           = var.instance_count
  subnet_ids                 = var.private_subnet_ids
  security_group_ids         = [aws_security_group.node.id]
  target_group_arns          = [aws_lb_target_group.sql.arn]
  termination_drain_seconds  = 300 # `cockroach node drain` moves leases away before the node stops
  data_volume_gb             = var.volume_gb
  kms_key_arn                = var.kms_key_arn
  datadog_api_key_secret_arn = var.datadog_api_key_secret_arn
  secret_arns                = [var.tls_secret_arn]
  tags                       = var.tags

  role_script = templatefile("${path.module}/cockroachdb.sh.tftpl", {
    version        = var.cockroach_version
    region         = data.aws_region.current.name
    group_name     = "${var.name}-cockroachdb"
    tls_secret_arn = var.tls_secret_arn
  })
}
