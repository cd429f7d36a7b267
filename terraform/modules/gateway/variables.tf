variable "name" {
  description = "Prefix of resource names, e.g. storm-stormday."
  type        = string
}

variable "environment" {
  description = "Environment name (Datadog env tag, DD_ENV)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the gateways."
  type        = string
}

variable "vpc_cidr" {
  description = "VPC range: the health checks and the load balancer reach the gateways from inside it."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets, one per zone: the Network Load Balancer's nodes."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets, one per zone: the gateway instances."
  type        = list(string)
}

variable "instance_type" {
  description = "Instance type (one gateway process per instance: it is one asyncio process)."
  type        = string
}

variable "instance_count" {
  description = "Gateways at the start and the autoscaling floor (stormday: from `storm cost`)."
  type        = number
}

variable "max_instances" {
  description = "Autoscaling ceiling."
  type        = number
}

variable "connections_per_instance_target" {
  description = "Target-tracking autoscaling keeps the average WebSocket connections per gateway near this."
  type        = number
}

variable "certificate_arn" {
  description = "ACM certificate of the public WebSocket host name (TLS ends at the load balancer)."
  type        = string
}

variable "ssl_policy" {
  description = "TLS policy of the listener (TLS 1.2 and 1.3 only)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "drain_timeout_s" {
  description = "STORM_DRAIN_TIMEOUT_S: in-flight acks, then close 1012 to every client, then exit."
  type        = number
  default     = 10
}

variable "drain_reconnect_spread_s" {
  description = "STORM_DRAIN_RECONNECT_SPREAD_S: clients wait a random 0..this before reconnecting after 1012."
  type        = number
  default     = 5
}

variable "storm" {
  description = "What every STORM process is configured with (version, Auth0, Pulsar, Hazelcast, allowed origins, secret ARNs)."
  type = object({
    version                 = string
    auth0_domain            = string
    auth0_audience          = string
    allowed_origins         = string
    pulsar_url              = string
    pulsar_admin_url        = string
    pulsar_cluster          = string
    hazelcast_group         = string
    hazelcast_cluster       = string
    database_url_secret_arn = string
    ca_secret_arn           = string
  })
}

variable "security_group_ids" {
  description = "Extra security groups of the instances (e.g. the one the Pulsar, Hazelcast and CockroachDB tiers accept)."
  type        = list(string)
  default     = []
}

variable "kms_key_arn" {
  description = "KMS key of the secrets and volumes."
  type        = string
}

variable "datadog_api_key_secret_arn" {
  description = "Secret holding the Datadog API key."
  type        = string
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
