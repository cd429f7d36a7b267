output "sql_host" {
  description = "Host of the internal SQL load balancer (the database_url secret names it)."
  value       = aws_lb.this.dns_name
}

output "survival_goal" {
  description = "The goal `storm migrate --survive` applies."
  value       = var.survival_goal
}

output "region" {
  description = "The region given to `storm migrate --regions`."
  value       = data.aws_region.current.name
}

output "security_group_id" {
  description = "Security group of the nodes."
  value       = aws_security_group.node.id
}
