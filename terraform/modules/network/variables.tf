variable "name" {
  description = "Prefix of every resource name (environment, e.g. storm-stormday)."
  type        = string
}

variable "cidr_block" {
  description = "The VPC's IPv4 range; split into one public and one private /20 per zone."
  type        = string
  default     = "10.40.0.0/16"
}

variable "azs" {
  description = "Exactly three availability zones of the region: every tier spreads over them."
  type        = list(string)

  validation {
    condition     = length(var.azs) == 3 && length(distinct(var.azs)) == 3
    error_message = "STORM runs over exactly three distinct availability zones."
  }
}

variable "interface_endpoints" {
  description = "AWS services reached through interface VPC endpoints instead of the NAT gateways (saves NAT processing and keeps secrets off the internet path)."
  type        = list(string)
  default     = ["secretsmanager", "ssm", "kms"]
}

variable "flow_log_retention_days" {
  description = "Days the VPC flow logs are kept."
  type        = number
  default     = 365
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the flow logs."
  type        = string
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
