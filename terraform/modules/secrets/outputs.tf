output "kms_key_arn" {
  description = "The key that encrypts secrets, volumes and logs."
  value       = aws_kms_key.this.arn
}

output "secret_arns" {
  description = "ARN of each secret by name (datadog_api_key, database_url, internal_ca, pulsar_tls, cockroach_tls, auth0_provisioning_client_secret)."
  value       = { for k, s in aws_secretsmanager_secret.this : k => s.arn }
}
