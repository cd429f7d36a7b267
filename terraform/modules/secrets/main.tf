# Every secret STORM's hosts use lives here, in AWS Secrets Manager, encrypted with one customer-managed
# KMS key. Terraform creates the secrets; values it does not know (the database URL with its password,
# certificates, the Datadog API key) are put by an operator with `aws secretsmanager put-secret-value`
# (terraform/README.md, "Order") and never appear in Terraform files, state or user data. Instances read
# only the secrets their role needs, through their IAM role (modules/node_group).

data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:a key policy's "*" resource is this key only; the account administers its own key
  #checkov:skip=CKV_AWS_111:a key policy's "*" resource is this key only
  #checkov:skip=CKV_AWS_356:a key policy's "*" resource is this key only
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid       = "FlowLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.amazonaws.com"]
    }
  }

  statement {
    sid       = "AutoScalingUsesKeyForVolumes" # encrypted EBS volumes of the groups' instances
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey", "kms:CreateGrant"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: Secrets Manager secrets, EBS volumes, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

locals {
  secrets = {
    datadog_api_key                  = "Datadog API key (agent on every host)"
    database_url                     = "STORM_DATABASE_URL: cockroachdb+asyncpg://storm:<password>@<sql_host>:26257/storm?ssl=verify-full"
    internal_ca                      = "PEM of the internal CA that signed the Pulsar and CockroachDB certificates"
    pulsar_tls                       = "JSON {cert, key, ca}: the brokers' TLS certificate"
    cockroach_tls                    = "JSON {ca, node_cert, node_key}: made with cockroach cert create-node"
    auth0_provisioning_client_secret = "Client secret of the Auth0 provisioning application (workspaces:create)"
  }
}

resource "aws_secretsmanager_secret" "this" {
  for_each                = local.secrets
  name                    = "${var.name}/${each.key}"
  description             = each.value
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = var.recovery_window_in_days
  tags                    = var.tags
  #checkov:skip=CKV2_AWS_57:rotation needs a Lambda per secret kind; rotate by hand (terraform/README.md, "Secrets") - Auth0 and Datadog keys are rotated at their issuer, certificates on expiry
}

resource "aws_secretsmanager_secret_version" "auth0_provisioning" {
  secret_id     = aws_secretsmanager_secret.this["auth0_provisioning_client_secret"].id
  secret_string = var.auth0_provisioning_client_secret
}
