output "service_url" {
  description = "STORM_PULSAR_URL: the brokers' binary TLS endpoint behind the internal load balancer."
  value       = "pulsar+ssl://${aws_lb.this.dns_name}:6651"
}

output "admin_url" {
  description = "STORM_PULSAR_ADMIN_URL: the brokers' admin REST API (TLS)."
  value       = "https://${aws_lb.this.dns_name}:8443"
}

output "cluster_name" {
  description = "STORM_PULSAR_CLUSTER."
  value       = var.cluster_name
}

output "quorums" {
  description = "Ensemble, write and ack quorums of new ledgers."
  value       = { ensemble = var.ensemble_size, write = var.write_quorum, ack = var.ack_quorum }
}

output "broker_autoscaling_group_name" {
  description = "The brokers' group (rolled one broker at a time)."
  value       = module.broker.autoscaling_group_name
}
