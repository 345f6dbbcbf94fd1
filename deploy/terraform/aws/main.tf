# Headline Studio on AWS:
#
#   Route 53 (domain_name) -> CloudFront (+ WAF; caches only the static docs)
#     -> API Gateway HTTP API (Cognito JWT authorizer on the generation routes, throttling)
#       -> Lambda (container image, the Flask app through service/lambda_handler.py)   compute = "lambda"
#       -> VPC link -> internal ALB -> ECS Fargate (Gunicorn, same image)              compute = "fargate"
#   Model run: S3 (versioned, KMS, private). Response cache: ElastiCache Redis in the VPC.
#   CloudWatch: log groups with retention, a dashboard, alarms -> SNS.
#
# Files: network.tf, storage.tf (S3, cache, KMS), compute.tf (Lambda, ECS), api.tf (API
# Gateway, Cognito), edge.tf (CloudFront, WAF, ACM, Route 53), monitoring.tf, iam.tf.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  name       = "${var.project_name}-${var.environment}"
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  use_lambda = var.compute == "lambda"
  use_ecs    = var.compute == "fargate"

  tags = merge(var.tags, {
    Project     = var.project_name
    Environment = var.environment
    ManagedBy   = "terraform"
  })

  # API scopes (Cognito resource server) = the app's API-key scopes (issue 6).
  scope_generate = "${aws_cognito_resource_server.api.identifier}/generate"
  scope_admin    = "${aws_cognito_resource_server.api.identifier}/admin"

  # Routes API Gateway exposes; everything else is a 404 at the gateway. `scopes = []` = open.
  routes = {
    "POST /prompt"          = [local.scope_generate]
    "POST /v1/headlines"    = [local.scope_generate]
    "GET /v1/models"        = [local.scope_generate]
    "GET /metrics"          = [local.scope_admin]
    "GET /healthz"          = []
    "GET /readyz"           = []
    "GET /swagger/{proxy+}" = []
  }

  # The same overrides of config.yml on both compute paths (the container entrypoint and
  # service/lambda_handler.py apply HEADLINE_CONFIG_SET). API keys are replaced by the Cognito
  # JWT checked at API Gateway, so the app's own key check is off here (deploy/README.md).
  config_set = join(" ", [
    "service.auth.enabled=false",
    "service.cache.socket_timeout_ms=200",
    # One request at a time per Lambda container: nothing to batch.
    "service.batching.enabled=${local.use_ecs}",
  ])

  redis_url = "rediss://:${var.cache_auth_token}@${aws_elasticache_replication_group.cache.primary_endpoint_address}:6379/0"
}
