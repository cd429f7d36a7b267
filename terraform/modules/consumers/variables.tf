variable "name" {
  description = "Prefix of resource names, e.g. storm-stormday."
  type        = string
}

variable "environment" {
  description = "Environment name (Datadog env tag, DD_ENV)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the consumers."
  type        = string
}

variable "vpc_cidr" {
  description = "VPC range (egress to Pulsar, Hazelcast and CockroachDB)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets, one per zone."
  type        = list(string)
}

variable "instance_type" {
  description = "Instance type of the consumers (persistence workers)."
  type        = string
}

variable "instance_count" {
  description = "Consumer instances (stormday: from `storm cost`)."
  type        = number
}

variable "storm" {
  description = "What every STORM process is configured with (see the gateway module)."
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
  description = "Extra security groups of the instances."
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

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
