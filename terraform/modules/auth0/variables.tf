variable "environment" {
  description = "Environment name (in the Auth0 object names)."
  type        = string
}

variable "api_identifier" {
  description = "The API's identifier: the `aud` STORM checks (STORM_AUTH0_AUDIENCE)."
  type        = string
}

variable "chat_origins" {
  description = "Origins of the chat page (allowed web origins, callback and logout URLs); also STORM_ALLOWED_ORIGINS."
  type        = list(string)
}

variable "token_lifetime_s" {
  description = "Access token lifetime, seconds (STORM_BAN_TTL_S must stay above it)."
  type        = number
  default     = 3600
}
