output "group_name" {
  description = "Tag value storm:group of the members (STORM processes list the members' addresses from it)."
  value       = "${var.name}-hazelcast"
}

output "cluster_name" {
  description = "STORM_HAZELCAST_CLUSTER."
  value       = var.cluster_name
}

output "security_group_id" {
  description = "Security group of the members."
  value       = aws_security_group.member.id
}
