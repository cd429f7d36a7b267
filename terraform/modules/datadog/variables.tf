variable "environment" {
  description = "The env tag every STORM metric carries (DD_ENV on the hosts) and every monitor and SLO filters on."
  type        = string
}
