variable "name" {
  description = "Prefix of resource names, e.g. storm-stormday."
  type        = string
}

variable "environment" {
  description = "Environment name (Datadog env tag)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the Pulsar cluster."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets, one per zone: ZooKeeper, bookies, brokers and the internal load balancer."
  type        = list(string)
}

variable "client_security_group_ids" {
  description = "Security groups of STORM's processes (gateways, API, consumers): the only ones that reach the brokers."
  type        = list(string)
}

variable "pulsar_version" {
  description = "Apache Pulsar release (the adapter is tested against 4.0.x, docs/operations.md)."
  type        = string
  default     = "4.0.7"
}

variable "cluster_name" {
  description = "Pulsar cluster name (STORM_PULSAR_CLUSTER: workspaces' tenants are allowed on it)."
  type        = string
  default     = "storm"
}

variable "broker" {
  description = "Brokers: instance type and count (a multiple of 3)."
  type = object({
    instance_type = string
    count         = number
  })
}

variable "bookie" {
  description = "Bookies: instance type, count (a multiple of 3, at least two per zone) and journal+ledger volume size."
  type = object({
    instance_type = string
    count         = number
    volume_gb     = number
  })

  validation {
    condition     = var.bookie.count >= 6 && var.bookie.count % 3 == 0
    error_message = "At least two bookies per zone (6): after losing a zone an ensemble of 3 must still form."
  }
}

variable "zookeeper" {
  description = "ZooKeeper (metadata store): instance type and count (3: one per zone, a majority survives a zone)."
  type = object({
    instance_type = string
    count         = number
  })

  validation {
    condition     = var.zookeeper.count == 3
    error_message = "ZooKeeper runs one member per zone (3) so a zone loss keeps a majority."
  }
}

variable "ensemble_size" {
  description = "managedLedgerDefaultEnsembleSize: bookies a ledger is striped over."
  type        = number
  default     = 3
}

variable "write_quorum" {
  description = "managedLedgerDefaultWriteQuorum: copies of each entry, each in a different zone (rack-aware placement)."
  type        = number
  default     = 3
}

variable "ack_quorum" {
  description = "managedLedgerDefaultAckQuorum: copies acknowledged before a publish is acked; >= 2 so an acked entry outlives a zone."
  type        = number
  default     = 2

  validation {
    condition     = var.ack_quorum >= 2
    error_message = "ack_quorum must be at least 2: one zone may hold one acknowledged copy and be lost."
  }
}

variable "tls_secret_arn" {
  description = "Secret with the brokers' TLS certificate, key and the internal CA (PEM, JSON keys cert/key/ca)."
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
