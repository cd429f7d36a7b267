variable "name" {
  description = "Name of the group, e.g. storm-stormday-gateway."
  type        = string
}

variable "role" {
  description = "STORM role or service this group runs (gateway, api, consumers, pulsar-broker, ...): the Datadog host tag role:<role>."
  type        = string
}

variable "environment" {
  description = "Environment name (Datadog tag env:<environment>)."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type (the stormday environment takes it from `storm cost`)."
  type        = string
}

variable "desired_capacity" {
  description = "Instances to run; a multiple of the zone count so every zone holds the same share."
  type        = number

  validation {
    condition     = var.desired_capacity >= 3 && var.desired_capacity % 3 == 0
    error_message = "desired_capacity must be a positive multiple of 3 (one share per zone)."
  }
}

variable "max_size" {
  description = "Upper bound for autoscaling; null: the group does not scale (stateful members)."
  type        = number
  default     = null
}

variable "subnet_ids" {
  description = "Private subnets, one per zone (three)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) == 3
    error_message = "A node group spans exactly three zones: give one private subnet per zone."
  }
}

variable "security_group_ids" {
  description = "Security groups of the instances."
  type        = list(string)
}

variable "role_script" {
  description = "Shell run by cloud-init after the common bootstrap (agent, secrets): installs and starts the role."
  type        = string
}

variable "secret_arns" {
  description = "Secrets Manager secrets this role may read (and nothing else); the bootstrap fetches them with the instance role."
  type        = list(string)
  default     = []
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the secrets and the EBS volumes (decrypt is granted to the instance role)."
  type        = string
}

variable "datadog_api_key_secret_arn" {
  description = "Secrets Manager secret holding the Datadog API key (read at boot by the agent installer)."
  type        = string
}

variable "datadog_site" {
  description = "Datadog site, e.g. datadoghq.eu."
  type        = string
  default     = "datadoghq.eu"
}

variable "data_volume_gb" {
  description = "Size of an extra encrypted gp3 data volume at /dev/sdf (0: none)."
  type        = number
  default     = 0
}

variable "target_group_arns" {
  description = "Load balancer target groups the instances register with."
  type        = list(string)
  default     = []
}

variable "termination_drain_seconds" {
  description = "Lifecycle hook timeout on termination: the instance drains its role (SIGTERM; gateways close 1012) before EC2 stops it. 0: no hook."
  type        = number
  default     = 0
}

variable "cloudwatch_metric_namespace" {
  description = "CloudWatch namespace the instance may publish metrics to (gateway connections for autoscaling); null: none."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags on every resource; also propagated to the instances."
  type        = map(string)
  default     = {}
}
