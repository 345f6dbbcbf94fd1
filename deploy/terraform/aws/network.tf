# A private-only VPC: nothing in it has a route to the internet. Lambda and Fargate reach S3
# through a gateway endpoint and (Fargate only) ECR and CloudWatch Logs through interface
# endpoints, so no NAT gateway is billed. Lambda's own logs and JWT checks do not need the VPC.

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first two zones (sorted by name) are used (slice below); AWS appends new zones with later letters, so the set does not change when a zone is added.
  state = "available"
}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, 2)
}

resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = local.name }
}

resource "aws_subnet" "private" {
  count             = length(local.azs)
  vpc_id            = aws_vpc.main.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index)

  tags = { Name = "${local.name}-private-${local.azs[count.index]}" }
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.main.id

  tags = { Name = "${local.name}-private" }
}

resource "aws_route_table_association" "private" {
  count          = length(aws_subnet.private)
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# The default security group allows nothing, so a resource that forgets its own SG is isolated.
resource "aws_default_security_group" "default" {
  vpc_id = aws_vpc.main.id
}

resource "aws_flow_log" "main" {
  vpc_id               = aws_vpc.main.id
  traffic_type         = "REJECT"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow.arn
  iam_role_arn         = aws_iam_role.flow_logs.arn
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.main.id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
}

# Fargate pulls its image and ships logs through these (Lambda does both outside the VPC).
resource "aws_vpc_endpoint" "interface" {
  for_each            = local.use_ecs ? toset(["ecr.api", "ecr.dkr", "logs"]) : toset([])
  vpc_id              = aws_vpc.main.id
  service_name        = "com.amazonaws.${local.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints.id]
}

resource "aws_security_group" "app" {
  name        = "${local.name}-app"
  description = "API compute (Lambda ENIs or Fargate tasks): outbound to the cache and AWS endpoints only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_egress_rule" "app_to_cache" {
  security_group_id            = aws_security_group.app.id
  description                  = "Redis (TLS)"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.cache.id
}

resource "aws_vpc_security_group_egress_rule" "app_to_endpoints" {
  security_group_id            = aws_security_group.app.id
  description                  = "Interface endpoints (ECR, CloudWatch Logs)"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.endpoints.id
}

resource "aws_vpc_security_group_egress_rule" "app_to_s3" {
  security_group_id = aws_security_group.app.id
  description       = "S3 through the gateway endpoint (model run, ECR image layers)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = aws_vpc_endpoint.s3.prefix_list_id
}

resource "aws_vpc_security_group_ingress_rule" "app_from_alb" {
  count                        = local.use_ecs ? 1 : 0
  security_group_id            = aws_security_group.app.id
  description                  = "Gunicorn from the internal ALB"
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
  referenced_security_group_id = aws_security_group.alb[0].id
}

resource "aws_security_group" "cache" {
  name        = "${local.name}-cache"
  description = "ElastiCache: Redis from the API compute only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "cache_from_app" {
  security_group_id            = aws_security_group.cache.id
  description                  = "Redis (TLS) from the API"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.app.id
}

resource "aws_security_group" "endpoints" {
  name        = "${local.name}-endpoints"
  description = "VPC interface endpoints: HTTPS from the API compute only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_app" {
  security_group_id            = aws_security_group.endpoints.id
  description                  = "HTTPS from the API compute"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.app.id
}

resource "aws_security_group" "alb" {
  count       = local.use_ecs ? 1 : 0
  name        = "${local.name}-alb"
  description = "Internal ALB: HTTP from the API Gateway VPC link only, to the tasks only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_ingress_rule" "alb_from_vpc_link" {
  #checkov:skip=CKV_AWS_260:The source is the VPC link's security group (referenced_security_group_id), not 0.0.0.0/0; checkov reads the missing CIDR as "any".
  count                        = local.use_ecs ? 1 : 0
  security_group_id            = aws_security_group.alb[0].id
  description                  = "HTTP from the API Gateway VPC link"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.vpc_link[0].id
}

resource "aws_vpc_security_group_egress_rule" "alb_to_app" {
  count                        = local.use_ecs ? 1 : 0
  security_group_id            = aws_security_group.alb[0].id
  description                  = "Gunicorn on the tasks"
  ip_protocol                  = "tcp"
  from_port                    = 8000
  to_port                      = 8000
  referenced_security_group_id = aws_security_group.app.id
}

resource "aws_security_group" "vpc_link" {
  count       = local.use_ecs ? 1 : 0
  name        = "${local.name}-vpc-link"
  description = "API Gateway VPC link ENIs: to the internal ALB only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_vpc_security_group_egress_rule" "vpc_link_to_alb" {
  count                        = local.use_ecs ? 1 : 0
  security_group_id            = aws_security_group.vpc_link[0].id
  description                  = "HTTP to the internal ALB"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.alb[0].id
}
