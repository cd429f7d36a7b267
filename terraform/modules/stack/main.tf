# One STORM deployment: the network, the secrets, the three stateful tiers (Pulsar, Hazelcast,
# CockroachDB), the three STORM roles (gateways behind an NLB, the tenants API behind an ALB, the
# consumers), Auth0 and Datadog. envs/<name>/ call it with their own sizes.

locals {
  name = "storm-${var.environment}"
  storm = {
    version                 = var.storm_version
    auth0_domain            = var.auth0_domain
    auth0_audience          = module.auth0.audience
    allowed_origins         = join(",", var.chat_origins)
    pulsar_url              = module.pulsar.service_url
    pulsar_admin_url        = module.pulsar.admin_url
    pulsar_cluster          = module.pulsar.cluster_name
    hazelcast_group         = module.hazelcast.group_name
    hazelcast_cluster       = module.hazelcast.cluster_name
    database_url_secret_arn = module.secrets.secret_arns["database_url"]
    ca_secret_arn           = module.secrets.secret_arns["internal_ca"]
  }
  datadog_key = module.secrets.secret_arns["datadog_api_key"]
}

module "auth0" {
  source = "../auth0"

  environment    = var.environment
  api_identifier = var.auth0_api_identifier
  chat_origins   = var.chat_origins
}

module "secrets" {
  source = "../secrets"

  name                             = local.name
  auth0_provisioning_client_secret = module.auth0.provisioning_client_secret
  tags                             = var.tags
}

module "network" {
  source = "../network"

  name        = local.name
  cidr_block  = var.vpc_cidr
  azs         = var.azs
  kms_key_arn = module.secrets.kms_key_arn
  tags        = var.tags
}

# The STORM processes' security groups exist before the tiers that admit them.
resource "aws_security_group" "storm_clients" {
  name        = "${local.name}-storm-clients"
  description = "Marker group of STORM processes: the Pulsar, Hazelcast and CockroachDB tiers accept it"
  vpc_id      = module.network.vpc_id
  tags        = var.tags
}

module "pulsar" {
  source = "../pulsar"

  name                       = local.name
  environment                = var.environment
  vpc_id                     = module.network.vpc_id
  private_subnet_ids         = module.network.private_subnet_ids
  client_security_group_ids  = [aws_security_group.storm_clients.id]
  broker                     = var.fleet["pulsar_broker"]
  bookie                     = merge(var.fleet["pulsar_bookie"], { volume_gb = 500 })
  zookeeper                  = var.fleet["pulsar_zookeeper"]
  tls_secret_arn             = module.secrets.secret_arns["pulsar_tls"]
  kms_key_arn                = module.secrets.kms_key_arn
  datadog_api_key_secret_arn = local.datadog_key
  tags                       = var.tags
}

module "hazelcast" {
  source = "../hazelcast"

  name                       = local.name
  environment                = var.environment
  vpc_id                     = module.network.vpc_id
  private_subnet_ids         = module.network.private_subnet_ids
  client_security_group_ids  = [aws_security_group.storm_clients.id]
  instance_type              = var.fleet["hazelcast"].instance_type
  instance_count             = var.fleet["hazelcast"].count
  kms_key_arn                = module.secrets.kms_key_arn
  datadog_api_key_secret_arn = local.datadog_key
  tags                       = var.tags
}

module "cockroachdb" {
  source = "../cockroachdb"

  name                       = local.name
  environment                = var.environment
  vpc_id                     = module.network.vpc_id
  private_subnet_ids         = module.network.private_subnet_ids
  client_security_group_ids  = [aws_security_group.storm_clients.id]
  instance_type              = var.fleet["cockroachdb"].instance_type
  instance_count             = var.fleet["cockroachdb"].count
  tls_secret_arn             = module.secrets.secret_arns["cockroach_tls"]
  kms_key_arn                = module.secrets.kms_key_arn
  datadog_api_key_secret_arn = local.datadog_key
  tags                       = var.tags
}

module "gateway" {
  source = "../gateway"

  name                            = local.name
  environment                     = var.environment
  vpc_id                          = module.network.vpc_id
  vpc_cidr                        = module.network.vpc_cidr
  public_subnet_ids               = module.network.public_subnet_ids
  private_subnet_ids              = module.network.private_subnet_ids
  instance_type                   = var.fleet["gateway"].instance_type
  instance_count                  = var.fleet["gateway"].count
  max_instances                   = var.gateway_max_instances
  connections_per_instance_target = var.gateway_connections_per_instance_target
  certificate_arn                 = var.ws_certificate_arn
  storm                           = local.storm
  security_group_ids              = [aws_security_group.storm_clients.id]
  kms_key_arn                     = module.secrets.kms_key_arn
  datadog_api_key_secret_arn      = local.datadog_key
  deletion_protection             = var.deletion_protection
  tags                            = var.tags
}

module "api" {
  source = "../api"

  name                       = local.name
  environment                = var.environment
  vpc_id                     = module.network.vpc_id
  vpc_cidr                   = module.network.vpc_cidr
  public_subnet_ids          = module.network.public_subnet_ids
  private_subnet_ids         = module.network.private_subnet_ids
  instance_type              = var.fleet["api"].instance_type
  instance_count             = var.fleet["api"].count
  certificate_arn            = var.api_certificate_arn
  storm                      = local.storm
  security_group_ids         = [aws_security_group.storm_clients.id]
  kms_key_arn                = module.secrets.kms_key_arn
  datadog_api_key_secret_arn = local.datadog_key
  deletion_protection        = var.deletion_protection
  tags                       = var.tags
}

module "consumers" {
  source = "../consumers"

  name                       = local.name
  environment                = var.environment
  vpc_id                     = module.network.vpc_id
  vpc_cidr                   = module.network.vpc_cidr
  private_subnet_ids         = module.network.private_subnet_ids
  instance_type              = var.fleet["consumers"].instance_type
  instance_count             = var.fleet["consumers"].count
  storm                      = local.storm
  security_group_ids         = [aws_security_group.storm_clients.id]
  kms_key_arn                = module.secrets.kms_key_arn
  datadog_api_key_secret_arn = local.datadog_key
  tags                       = var.tags
}

module "datadog" {
  source = "../datadog"

  environment = var.environment
}
