output "autoscaling_group_name" {
  description = "Name of the autoscaling group (the deploy workflow rolls it)."
  value       = aws_autoscaling_group.this.name
}

output "autoscaling_group_arn" {
  description = "ARN of the autoscaling group."
  value       = aws_autoscaling_group.this.arn
}

output "role_arn" {
  description = "ARN of the instances' IAM role."
  value       = aws_iam_role.this.arn
}

output "role_name" {
  description = "Name of the instances' IAM role (to attach more narrowly scoped policies)."
  value       = aws_iam_role.this.name
}

output "launch_template_id" {
  description = "ID of the launch template."
  value       = aws_launch_template.this.id
}
