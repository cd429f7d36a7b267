output "autoscaling_group_name" {
  description = "The consumers' autoscaling group."
  value       = module.group.autoscaling_group_name
}

output "security_group_id" {
  description = "Security group of the consumer instances."
  value       = aws_security_group.consumers.id
}
