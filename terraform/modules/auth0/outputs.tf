output "audience" {
  description = "STORM_AUTH0_AUDIENCE."
  value       = auth0_resource_server.storm.identifier
}

output "required_scopes" {
  description = "STORM_AUTH0_REQUIRED_SCOPES."
  value       = "chat"
}

output "chat_client_id" {
  description = "Client ID of the chat page (public)."
  value       = auth0_client.chat.client_id
}

output "provisioning_client_id" {
  description = "Client ID of the provisioning application."
  value       = auth0_client.provisioning.client_id
}

output "provisioning_client_secret" {
  description = "Its secret: only for the secrets module, which stores it in Secrets Manager."
  value       = auth0_client_credentials.provisioning.client_secret
  sensitive   = true
}
