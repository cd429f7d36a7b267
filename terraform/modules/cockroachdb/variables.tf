variable "name" {
  description = "Prefix of resource names, e.g. storm-stormday."
  type        = string
}

variable "environment" {
  description = "Environment name (Datadog env tag)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cluster."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets, one per zone."
  type        = list(string)
}

variable "client_security_group_ids" {
  description = "Security groups of STORM's processes: the only SQL clients (26257)."
  type        = list(string)
}

variable "instance_type" {
  description = "Node instance type."
  type        = string
}

variable "instance_count" {
  description = "Nodes (a multiple of 3: the same number per zone)."
  type        = number
}

variable "volume_gb" {
  description = "Encrypted gp3 store volume per node."
  type        = number
  default     = 500
}

variable "cockroach_version" {
  description = "CockroachDB release."
  type        = string
  default     = "24.2.4"
}

variable "survival_goal" {
  description = "Database survival goal applied by `storm migrate --regions <region> --survive zone` (docs/database.md)."
  type        = string
  default     = "zone"

  validation {
    condition     = contains(["zone", "region"], var.survival_goal)
    error_message = "survival_goal is zone or region."
  }
}

variable "tls_secret_arn" {
  description = "Secret with the node certificate, key and CA (PEM; JSON keys ca, node_cert, node_key), made with `cockroach cert`."
  type        = string
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
