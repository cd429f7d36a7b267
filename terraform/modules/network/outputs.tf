output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "IPv4 range of the VPC (security group rules for traffic between tiers)."
  value       = aws_vpc.this.cidr_block
}

output "azs" {
  description = "The three availability zones, in subnet order."
  value       = var.azs
}

output "public_subnet_ids" {
  description = "One public subnet per zone (internet-facing load balancers, NAT gateways)."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "One private subnet per zone (every instance, internal load balancers)."
  value       = aws_subnet.private[*].id
}

output "nat_public_ips" {
  description = "Egress addresses of the NAT gateways (to allow-list at Auth0 or Datadog if needed)."
  value       = aws_eip.nat[*].public_ip
}
