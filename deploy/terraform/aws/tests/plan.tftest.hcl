# Offline plan tests with mocked AWS providers (`terraform test`, Terraform >= 1.7): both
# compute paths plan, the switch creates exactly one of them, and bad inputs are refused by the
# variables' validation blocks. No credentials or network needed.

mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
  override_data {
    target = data.aws_availability_zones.available
    values = { names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"] }
  }
  override_data {
    target = data.aws_region.current
    values = { name = "eu-west-1" }
  }
  override_data {
    target = data.aws_partition.current
    values = { partition = "aws" }
  }
  override_data {
    target = data.aws_caller_identity.current
    values = { account_id = "123456789012" }
  }
}

mock_provider "aws" {
  alias = "us_east_1"
}

variables {
  domain_name           = "headlines.example.com"
  hosted_zone_name      = "example.com"
  image_uri             = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/headline-studio:0.1.0"
  model_bucket          = "example-headline-studio-models"
  cognito_domain_prefix = "example-headline-studio"
  cache_auth_token      = "0123456789abcdef0123456789abcdef"
}

run "lambda_path" {
  command = plan

  assert {
    condition     = length(aws_lambda_function.api) == 1 && length(aws_ecs_service.api) == 0 && length(aws_lb.api) == 0
    error_message = "compute = lambda must create the Lambda and no ECS/ALB"
  }
  assert {
    condition     = aws_lambda_function.api[0].package_type == "Image" && aws_lambda_function.api[0].image_uri == var.image_uri
    error_message = "the Lambda runs the container image"
  }
  assert {
    condition     = alltrue([for k, r in aws_apigatewayv2_route.routes : r.authorization_type == (contains(["GET /healthz", "GET /readyz", "GET /swagger/{proxy+}"], k) ? "NONE" : "JWT")])
    error_message = "every route but health and docs needs the JWT authorizer"
  }
  assert {
    condition     = aws_apigatewayv2_route.routes["POST /prompt"].authorization_scopes == toset(["headline-api/generate"])
    error_message = "POST /prompt needs the generate scope"
  }
  assert {
    condition     = aws_apigatewayv2_route.routes["GET /metrics"].authorization_scopes == toset(["headline-api/admin"])
    error_message = "GET /metrics needs the admin scope"
  }
  assert {
    condition     = local.ecr_repository_arn == "arn:aws:ecr:eu-west-1:123456789012:repository/headline-studio"
    error_message = "ECR repository ARN derived from image_uri is wrong"
  }
  assert {
    condition     = aws_cloudwatch_log_group.lambda[0].retention_in_days == 365
    error_message = "log groups keep logs for log_retention_days"
  }
  assert {
    condition     = length(aws_vpc_endpoint.interface) == 0
    error_message = "interface endpoints are only for the Fargate path"
  }
}

run "fargate_path" {
  command = plan

  variables {
    compute = "fargate"
  }

  assert {
    condition     = length(aws_lambda_function.api) == 0 && length(aws_ecs_service.api) == 1 && aws_lb.api[0].internal
    error_message = "compute = fargate must create ECS behind an internal ALB and no Lambda"
  }
  assert {
    condition     = aws_apigatewayv2_integration.alb[0].connection_type == "VPC_LINK"
    error_message = "API Gateway reaches the internal ALB through a VPC link"
  }
  assert {
    condition     = length(aws_vpc_endpoint.interface) == 3
    error_message = "Fargate needs the ECR and Logs endpoints (no NAT)"
  }
}

run "rejects_bad_image_uri" {
  command = plan

  variables {
    image_uri = "docker.io/library/headline:latest"
  }

  expect_failures = [var.image_uri]
}

run "rejects_bad_compute" {
  command = plan

  variables {
    compute = "ec2"
  }

  expect_failures = [var.compute]
}

run "rejects_model_key_without_tarball" {
  command = plan

  variables {
    model_key = "runs/latest"
  }

  expect_failures = [var.model_key]
}
