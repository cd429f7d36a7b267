output "websocket_lb_dns_name" {
  description = "Gateway NLB: the WebSocket host name's alias target."
  value       = module.gateway.dns_name
}

output "api_lb_dns_name" {
  description = "Tenants API ALB: the API host name's alias target."
  value       = module.api.dns_name
}

output "gateway_autoscaling_group" {
  description = "What the deploy workflow rolls, one drained gateway at a time."
  value       = module.gateway.autoscaling_group_name
}

output "gateway_target_group_arn" {
  description = "The gateways' target group (the deploy workflow waits for healthy targets)."
  value       = module.gateway.target_group_arn
}

output "deploy_gate_monitor_tags" {
  description = "Datadog monitor tags that stop a rollout when any of them alerts."
  value       = module.datadog.deploy_gate_monitor_tags
}

output "pulsar_quorums" {
  description = "Ensemble, write and ack quorums of new ledgers."
  value       = module.pulsar.quorums
}

output "cockroachdb" {
  description = "What `storm migrate --regions <region> --survive <goal>` is run with."
  value       = { sql_host = module.cockroachdb.sql_host, region = module.cockroachdb.region, survival_goal = module.cockroachdb.survival_goal }
}

output "secret_arns" {
  description = "Secrets to fill with `aws secretsmanager put-secret-value` before the first boot."
  value       = module.secrets.secret_arns
}
