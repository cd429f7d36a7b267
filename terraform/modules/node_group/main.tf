# One group of identical instances spread evenly over three zones: launch template (IMDSv2, encrypted
# volumes, no public address), an instance role that may read only its own secrets, the common bootstrap
# (Datadog agent with host tags role/zone/env, secrets into /etc/storm/env) and the role's own script.
# Stateful members (Pulsar, Hazelcast, CockroachDB) use it with a fixed size: a replaced node rejoins
# empty and its cluster re-replicates onto it (docs/operations.md, "Zone loss").

data "aws_ssm_parameter" "ami" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name               = var.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

# Session Manager instead of SSH: no port 22 anywhere.
resource "aws_iam_role_policy_attachment" "ssm" {
  role       = aws_iam_role.this.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "role" {
  statement {
    sid       = "ReadOwnSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = concat([var.datadog_api_key_secret_arn], var.secret_arns)
  }

  statement {
    sid       = "DecryptOwnSecrets"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "DiscoverPeers" # Hazelcast's AWS discovery, CockroachDB --join and Pulsar rack names read the fleet
    actions   = ["ec2:DescribeInstances", "ec2:DescribeAvailabilityZones"]
    resources = ["*"]
  }

  statement {
    sid       = "CompleteOwnLifecycle" # the drain hook tells the group when the role has stopped
    actions   = ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"]
    resources = ["arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/${var.name}"]
  }

  dynamic "statement" {
    for_each = var.cloudwatch_metric_namespace == null ? [] : [var.cloudwatch_metric_namespace]
    content {
      sid       = "PublishScalingMetric"
      actions   = ["cloudwatch:PutMetricData"]
      resources = ["*"]
      condition {
        test     = "StringEquals"
        variable = "cloudwatch:namespace"
        values   = [statement.value]
      }
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "${var.name}-least-privilege"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.role.json
}

resource "aws_iam_instance_profile" "this" {
  name = var.name
  role = aws_iam_role.this.name
  tags = var.tags
}

locals {
  user_data = templatefile("${path.module}/bootstrap.sh.tftpl", {
    role                       = var.role
    environment                = var.environment
    group_name                 = var.name
    datadog_site               = var.datadog_site
    datadog_api_key_secret_arn = var.datadog_api_key_secret_arn
    data_volume                = var.data_volume_gb > 0
    role_script                = var.role_script
  })
}

resource "aws_launch_template" "this" {
  name_prefix            = "${var.name}-"
  image_id               = data.aws_ssm_parameter.ami.value
  instance_type          = var.instance_type
  vpc_security_group_ids = var.security_group_ids
  user_data              = base64encode(local.user_data)
  ebs_optimized          = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.this.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = 30
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  dynamic "block_device_mappings" {
    for_each = var.data_volume_gb > 0 ? [var.data_volume_gb] : []
    content {
      device_name = "/dev/sdf"
      ebs {
        volume_size           = block_device_mappings.value
        volume_type           = "gp3"
        encrypted             = true
        kms_key_id            = var.kms_key_arn
        delete_on_termination = true
      }
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = var.name, "storm:role" = var.role, "storm:group" = var.name })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = var.name, "storm:role" = var.role })
  }

  tags = var.tags
}

resource "aws_autoscaling_group" "this" {
  name                      = var.name
  vpc_zone_identifier       = var.subnet_ids
  desired_capacity          = var.desired_capacity
  min_size                  = var.desired_capacity
  max_size                  = coalesce(var.max_size, var.desired_capacity)
  target_group_arns         = var.target_group_arns
  health_check_type         = length(var.target_group_arns) > 0 ? "ELB" : "EC2"
  health_check_grace_period = 180
  capacity_rebalance        = false
  default_instance_warmup   = 120

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # Rolling replacement is the deploy workflow's job (drain, then replace, one at a time), never the group's.
  dynamic "initial_lifecycle_hook" {
    for_each = var.termination_drain_seconds > 0 ? [var.termination_drain_seconds] : []
    content {
      name                 = "drain"
      lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
      heartbeat_timeout    = initial_lifecycle_hook.value
      default_result       = "CONTINUE"
    }
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = var.name, "storm:role" = var.role })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity] # the scaling policy owns it between deploys
  }
}
