output "websocket_lb_dns_name" {
  description = "Gateway NLB: the WebSocket host name's alias target."
  value       = module.storm.websocket_lb_dns_name
}

output "api_lb_dns_name" {
  description = "Tenants API ALB: the API host name's alias target."
  value       = module.storm.api_lb_dns_name
}

output "gateway_autoscaling_group" {
  description = "What the deploy workflow rolls."
  value       = module.storm.gateway_autoscaling_group
}

output "gateway_target_group_arn" {
  description = "The gateways' target group."
  value       = module.storm.gateway_target_group_arn
}

output "deploy_gate_monitor_tags" {
  description = "Datadog monitor tags that stop a rollout."
  value       = module.storm.deploy_gate_monitor_tags
}

output "pulsar_quorums" {
  description = "Ensemble, write and ack quorums."
  value       = module.storm.pulsar_quorums
}

output "cockroachdb" {
  description = "Arguments of `storm migrate --regions --survive`."
  value       = module.storm.cockroachdb
}

output "secret_arns" {
  description = "Secrets to fill before the first boot."
  value       = module.storm.secret_arns
}
