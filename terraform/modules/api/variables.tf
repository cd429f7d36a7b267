variable "name" {
  description = "Prefix of resource names, e.g. storm-stormday."
  type        = string
}

variable "environment" {
  description = "Environment name (Datadog env tag, DD_ENV)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the tenants API."
  type        = string
}

variable "vpc_cidr" {
  description = "VPC range (egress to Pulsar, Hazelcast and CockroachDB)."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets, one per zone: the Application Load Balancer."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets, one per zone: the API instances."
  type        = list(string)
}

variable "instance_type" {
  description = "Instance type of the tenants API."
  type        = string
}

variable "instance_count" {
  description = "API instances (a multiple of 3; control plane, not on the message path)."
  type        = number
}

variable "certificate_arn" {
  description = "ACM certificate of the API host name."
  type        = string
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
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
