variable "region" {
  description = "AWS region (the price table of `storm cost` is eu-west-1's)."
  type        = string
  default     = "eu-west-1"
}

variable "azs" {
  description = "Three availability zones of the region."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "vpc_cidr" {
  description = "The VPC's range."
  type        = string
}

variable "storm_version" {
  description = "storm-chat release to run (the deploy workflow passes the tag)."
  type        = string
}

variable "ws_certificate_arn" {
  description = "ACM certificate of the WebSocket host name (TF_VAR_ws_certificate_arn in the deploy workflow)."
  type        = string
}

variable "api_certificate_arn" {
  description = "ACM certificate of the API host name (TF_VAR_api_certificate_arn)."
  type        = string
}

variable "auth0_domain" {
  description = "Auth0 tenant domain."
  type        = string
}

variable "auth0_api_identifier" {
  description = "Auth0 API identifier (the audience)."
  type        = string
}

variable "chat_origins" {
  description = "Origins of the chat page."
  type        = list(string)
}

variable "fleet_source" {
  description = "Where the fleet sizes come from (stormday: `storm cost`)."
  type        = string
}

variable "fleet" {
  description = "Instance type and count per role."
  type = map(object({
    instance_type = string
    count         = number
  }))
}

variable "gateway_connections_per_instance_target" {
  description = "Average WebSocket connections per gateway that autoscaling aims at."
  type        = number
}

variable "gateway_max_instances" {
  description = "Autoscaling ceiling of the gateways."
  type        = number
}

variable "deletion_protection" {
  description = "Protect the public load balancers from deletion."
  type        = bool
  default     = true
}
