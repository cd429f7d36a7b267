# The tenants REST API (`storm serve api`) behind an internet-facing Application Load Balancer, over three
# zones. Only HTTPS on 443 is open, and only on the load balancer.

resource "aws_security_group" "alb" {
  name        = "${var.name}-api-alb"
  description = "API ALB: HTTPS from anywhere; forwards to the API instances"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from the internet: the only public entry of the tenants API"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_api" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the API instances"
  referenced_security_group_id = aws_security_group.api.id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

resource "aws_security_group" "api" {
  name        = "${var.name}-api"
  description = "API instances: port 8000 from the ALB only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.api.id
  description                  = "HTTP from the ALB"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

resource "aws_vpc_security_group_egress_rule" "api_https" {
  security_group_id = aws_security_group.api.id
  description       = "HTTPS out through the NAT gateways: Auth0 JWKS, Datadog intake, packages"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "api_vpc" {
  for_each          = toset(["5701", "6651", "8443", "26257"])
  security_group_id = aws_security_group.api.id
  description       = "STORM's services inside the VPC, port ${each.value}"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
}

resource "aws_lb" "this" {
  name                       = "${var.name}-api"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  tags                       = var.tags
  #checkov:skip=CKV_AWS_150:deletion protection is var.deletion_protection: on in stormday, off in staging, which is torn down after each test
  #checkov:skip=CKV_AWS_91:no access-log bucket for a control-plane API; the API logs every request with its tenant
  #checkov:skip=CKV2_AWS_28:WAF is not in the 700 EUR launch budget; the API authenticates every call (Auth0 RS256) and rate-limits per workspace
}

resource "aws_lb_target_group" "this" {
  name                 = "${var.name}-api"
  port                 = 8000
  protocol             = "HTTP"
  vpc_id               = var.vpc_id
  deregistration_delay = 15

  health_check {
    path                = "/healthz"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
    matcher             = "200"
  }

  tags = var.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = var.ssl_policy

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags
}

module "group" {
  source = "../node_group"

  name                       = "${var.name}-api"
  role                       = "api"
  environment                = var.environment
  instance_type              = var.instance_type
  desired_capacity           = var.instance_count
  subnet_ids                 = var.private_subnet_ids
  security_group_ids         = concat([aws_security_group.api.id], var.security_group_ids)
  target_group_arns          = [aws_lb_target_group.this.arn]
  termination_drain_seconds  = 60
  kms_key_arn                = var.kms_key_arn
  datadog_api_key_secret_arn = var.datadog_api_key_secret_arn
  secret_arns                = [var.storm.database_url_secret_arn, var.storm.ca_secret_arn]
  tags                       = var.tags

  role_script = templatefile("${path.module}/../node_group/storm_role.sh.tftpl", {
    role                     = "api"
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
    drain_timeout_s          = 10
    drain_reconnect_spread_s = 0
    publish_connections      = false
  })
}
