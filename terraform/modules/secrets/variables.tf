variable "name" {
  description = "Prefix of secret names and the key alias, e.g. storm-stormday."
  type        = string
}

variable "auth0_provisioning_client_secret" {
  description = "The Auth0 provisioning client's secret (from the auth0 module's output; stored, never printed)."
  type        = string
  sensitive   = true
}

variable "recovery_window_in_days" {
  description = "Days a deleted secret can be restored."
  type        = number
  default     = 7
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
