output "dns_name" {
  description = "DNS name of the Application Load Balancer (point the API host name's alias here)."
  value       = aws_lb.this.dns_name
}

output "zone_id" {
  description = "Route 53 zone ID of the load balancer."
  value       = aws_lb.this.zone_id
}

output "autoscaling_group_name" {
  description = "The API's autoscaling group."
  value       = module.group.autoscaling_group_name
}

output "security_group_id" {
  description = "Security group of the API instances."
  value       = aws_security_group.api.id
}
