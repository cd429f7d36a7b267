terraform {
  required_version = ">= 1.10" # the S3 backend's use_lockfile

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
    auth0 = {
      source  = "auth0/auth0"
      version = "~> 1.7"
    }
    datadog = {
      source  = "DataDog/datadog"
      version = "~> 3.40"
    }
  }

  # State in S3 (encrypted, locked with a lock file): the bucket is given at init,
  # terraform init -backend-config="bucket=<state bucket>" (terraform/README.md, "Order").
  backend "s3" {
    key          = "storm/staging.tfstate"
    region       = "eu-west-1"
    encrypt      = true
    use_lockfile = true
  }
}
