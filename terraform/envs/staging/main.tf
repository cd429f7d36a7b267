# The staging environment: providers and the stack (terraform/modules/stack) with this environment's sizes.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project     = "storm"
      environment = "staging"
      managed-by  = "terraform"
    }
  }
}

# Credentials from the environment: AUTH0_DOMAIN, AUTH0_CLIENT_ID, AUTH0_CLIENT_SECRET (the deploy
# workflow's secrets), never from files.
provider "auth0" {}

# DD_API_KEY, DD_APP_KEY and DD_HOST (the site's API address) from the environment, like Auth0's.
provider "datadog" {}

module "storm" {
  source = "../../modules/stack"

  environment                             = "staging"
  azs                                     = var.azs
  vpc_cidr                                = var.vpc_cidr
  storm_version                           = var.storm_version
  ws_certificate_arn                      = var.ws_certificate_arn
  api_certificate_arn                     = var.api_certificate_arn
  auth0_domain                            = var.auth0_domain
  auth0_api_identifier                    = var.auth0_api_identifier
  chat_origins                            = var.chat_origins
  fleet                                   = var.fleet
  gateway_connections_per_instance_target = var.gateway_connections_per_instance_target
  gateway_max_instances                   = var.gateway_max_instances
  deletion_protection                     = var.deletion_protection
}
