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
  description = "Security groups of STORM's processes: the only clients of port 5701 (the open-source edition has no TLS or member authentication)."
  type        = list(string)
}

variable "instance_type" {
  description = "Member instance type."
  type        = string
}

variable "instance_count" {
  description = "Members (a multiple of 3: the same number per zone, so a zone's partition group is never the only copy)."
  type        = number
}

variable "hazelcast_version" {
  description = "Hazelcast release (docs/operations.md: 5.6)."
  type        = string
  default     = "5.6.0"
}

variable "cluster_name" {
  description = "STORM_HAZELCAST_CLUSTER."
  type        = string
  default     = "storm"
}

variable "backup_count" {
  description = "Synchronous backups of every map STORM uses; with ZONE_AWARE partition groups each backup is in another zone."
  type        = number
  default     = 1

  validation {
    condition     = var.backup_count >= 1
    error_message = "backup_count must be at least 1 so a zone loss loses no entry."
  }
}

variable "kms_key_arn" {
  description = "KMS key of the volumes."
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
