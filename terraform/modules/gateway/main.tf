# WebSocket gateways: an autoscaling group over three zones behind an internet-facing Network Load
# Balancer. TLS ends at the NLB (TLS listener idle timeout: 350 s, fixed by AWS; STORM's clients ping every
# 25 s and idle sockets close after 60 s, so the NLB never cuts a live connection). Deregistration waits
# for STORM's drain (close 1012, clients reconnect to the other gateways after a random 0..spread s) and
# only then terminates what is left.

resource "aws_security_group" "nlb" {
  name        = "${var.name}-gateway-nlb"
  description = "Gateway NLB: WebSocket clients on 443 from anywhere; forwards to the gateways"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "nlb_https" {
  security_group_id = aws_security_group.nlb.id
  description       = "WebSocket clients (wss) from the internet: the only public entry of the gateways"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_gateways" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "To the gateways' port"
  referenced_security_group_id = aws_security_group.gateway.id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

resource "aws_security_group" "gateway" {
  name        = "${var.name}-gateway"
  description = "Gateway instances: port 8000 from the NLB only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "gateway_from_nlb" {
  security_group_id            = aws_security_group.gateway.id
  description                  = "WebSocket traffic and health checks from the NLB"
  referenced_security_group_id = aws_security_group.nlb.id
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
}

resource "aws_vpc_security_group_egress_rule" "gateway_https" {
  security_group_id = aws_security_group.gateway.id
  description       = "HTTPS out through the NAT gateways: Auth0 JWKS, Datadog intake, packages"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# Pulsar (6651 binary TLS, 8443 admin), Hazelcast (5701), CockroachDB (26257): inside the VPC only.
resource "aws_vpc_security_group_egress_rule" "gateway_vpc" {
  for_each          = toset(["5701", "6651", "8443", "26257"])
  security_group_id = aws_security_group.gateway.id
  description       = "STORM's services inside the VPC, port ${each.value}"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
}

resource "aws_lb" "this" {
  name                             = "${var.name}-gw"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = var.public_subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = false # no inter-AZ charge: each zone's NLB node feeds its own gateways
  enable_deletion_protection       = var.deletion_protection
  tags                             = var.tags
  #checkov:skip=CKV_AWS_91:access logs of a TLS NLB record only connection setup; the gateways log every connection with its tenant
  #checkov:skip=CKV_AWS_152:cross-zone off on purpose: no inter-AZ charge on 500 000 deliveries/s, and every zone holds the same share of gateways
  #checkov:skip=CKV_AWS_150:deletion protection is var.deletion_protection: on in stormday, off in staging, which is torn down after each test
}

resource "aws_lb_target_group" "this" {
  name                   = "${var.name}-gw"
  port                   = 8000
  protocol               = "TCP"
  vpc_id                 = var.vpc_id
  target_type            = "instance"
  preserve_client_ip     = true # STORM_MAX_CONNECTIONS_PER_IP needs the client's address
  deregistration_delay   = var.drain_timeout_s + var.drain_reconnect_spread_s + 15
  connection_termination = true # after the drain, cut what is left so the instance can go

  health_check {
    protocol            = "HTTP"
    path                = "/healthz" # 503 while draining: out of rotation before the 1012 closes
    port                = "traffic-port"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  stickiness {
    type    = "source_ip"
    enabled = false
  }

  tags = var.tags
}

resource "aws_lb_listener" "wss" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "TLS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = var.ssl_policy
  alpn_policy       = "HTTP1Only" # WebSocket upgrades are HTTP/1.1

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags
}

module "group" {
  source = "../node_group"

  name                        = "${var.name}-gateway"
  role                        = "gateway"
  environment                 = var.environment
  instance_type               = var.instance_type
  desired_capacity            = var.instance_count
  max_size                    = var.max_instances
  subnet_ids                  = var.private_subnet_ids
  security_group_ids          = concat([aws_security_group.gateway.id], var.security_group_ids)
  target_group_arns           = [aws_lb_target_group.this.arn]
  termination_drain_seconds   = var.drain_timeout_s + var.drain_reconnect_spread_s + 60
  cloudwatch_metric_namespace = "STORM/Gateway"
  kms_key_arn                 = var.kms_key_arn
  datadog_api_key_secret_arn  = var.datadog_api_key_secret_arn
  secret_arns                 = [var.storm.database_url_secret_arn, var.storm.ca_secret_arn]
  tags                        = var.tags

  role_script = templatefile("${path.module}/../node_group/storm_role.sh.tftpl", {
    role                     = "gateway"
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
    drain_timeout_s          = var.drain_timeout_s
    drain_reconnect_spread_s = var.drain_reconnect_spread_s
    publish_connections      = true
  })
}

resource "aws_autoscaling_policy" "connections" {
  name                   = "${var.name}-gateway-connections"
  autoscaling_group_name = module.group.autoscaling_group_name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    target_value     = var.connections_per_instance_target
    disable_scale_in = false

    customized_metric_specification {
      metric_name = "Connections"
      namespace   = "STORM/Gateway"
      statistic   = "Average"
      unit        = "Count"

      metric_dimension {
        name  = "AutoScalingGroupName"
        value = module.group.autoscaling_group_name
      }
    }
  }
}
