output "deploy_gate_monitor_tags" {
  description = "Monitor tags the rolling gateway deploy polls; any of these monitors in Alert stops the rollout."
  value       = local.deploy_gate_tags
}
