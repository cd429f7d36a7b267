terraform {
  required_version = ">= 1.6"

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
}
