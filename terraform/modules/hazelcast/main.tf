# Hazelcast members over three zones with ZONE_AWARE partition groups: a partition's backups are never in
# the owner's zone, so losing a zone loses no entry (backup_count >= 1). Members find each other through
# the AWS discovery of the Hazelcast jar (EC2 tags), which also supplies each member's zone.

resource "aws_security_group" "member" {
  name        = "${var.name}-hazelcast"
  description = "Hazelcast members: 5701 from STORM's processes and other members only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "from_clients" {
  for_each                     = toset(var.client_security_group_ids)
  security_group_id            = aws_security_group.member.id
  description                  = "Hazelcast clients (STORM processes)"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 5701
  to_port                      = 5701
}

resource "aws_vpc_security_group_ingress_rule" "from_members" {
  security_group_id            = aws_security_group.member.id
  description                  = "Other members"
  referenced_security_group_id = aws_security_group.member.id
  ip_protocol                  = "tcp"
  from_port                    = 5701
  to_port                      = 5701
}

resource "aws_vpc_security_group_egress_rule" "to_members" {
  security_group_id            = aws_security_group.member.id
  description                  = "Other members"
  referenced_security_group_id = aws_security_group.member.id
  ip_protocol                  = "tcp"
  from_port                    = 5701
  to_port                      = 5701
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.member.id
  description       = "HTTPS out: EC2 API (discovery), Datadog intake, the Hazelcast jar"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

module "group" {
  source = "../node_group"

  name                       = "${var.name}-hazelcast"
  role                       = "hazelcast"
  environment                = var.environment
  instance_type              = var.instance_type
  desired_capacity           = var.instance_count
  subnet_ids                 = var.private_subnet_ids
  security_group_ids         = [aws_security_group.member.id]
  kms_key_arn                = var.kms_key_arn
  datadog_api_key_secret_arn = var.datadog_api_key_secret_arn
  tags                       = var.tags

  role_script = templatefile("${path.module}/hazelcast.sh.tftpl", {
    version = var.hazelcast_version
    config = templatefile("${path.module}/hazelcast.yaml.tftpl", {
      cluster_name = var.cluster_name
      group_name   = "${var.name}-hazelcast"
      backup_count = var.backup_count
    })
  })
}
