output "dns_name" {
  description = "DNS name of the Network Load Balancer (point the WebSocket host name's alias here)."
  value       = aws_lb.this.dns_name
}

output "zone_id" {
  description = "Route 53 zone ID of the load balancer (for an alias record)."
  value       = aws_lb.this.zone_id
}

output "autoscaling_group_name" {
  description = "The gateways' autoscaling group (rolled by the deploy workflow)."
  value       = module.group.autoscaling_group_name
}

output "target_group_arn" {
  description = "Target group of the gateways (the deploy workflow waits for healthy targets)."
  value       = aws_lb_target_group.this.arn
}

output "security_group_id" {
  description = "Security group of the gateway instances."
  value       = aws_security_group.gateway.id
}
