# --- Cognito: machine-to-machine tokens (client credentials) with the app's scopes ------------

resource "aws_cognito_user_pool" "main" {
  name                = local.name
  deletion_protection = var.environment == "prod" ? "ACTIVE" : "INACTIVE"
  mfa_configuration   = "OPTIONAL"

  software_token_mfa_configuration {
    enabled = true
  }

  password_policy {
    minimum_length    = 14
    require_lowercase = true
    require_uppercase = true
    require_numbers   = true
    require_symbols   = true
  }

  admin_create_user_config {
    allow_admin_create_user_only = true
  }
}

resource "aws_cognito_user_pool_domain" "main" {
  domain       = var.cognito_domain_prefix
  user_pool_id = aws_cognito_user_pool.main.id
}

# Scopes mirror the app's API-key scopes (issue 6): `generate` and `admin`.
resource "aws_cognito_resource_server" "api" {
  identifier   = "headline-api"
  name         = "Headline Studio API"
  user_pool_id = aws_cognito_user_pool.main.id

  scope {
    scope_name        = "generate"
    scope_description = "Generate headlines (POST /prompt, POST /v1/headlines, GET /v1/models)"
  }

  scope {
    scope_name        = "admin"
    scope_description = "Operate the service (GET /metrics)"
  }
}

# One app client = one API key of the local stack: its id/secret buy a 1-hour access token.
resource "aws_cognito_user_pool_client" "generate" {
  name                                 = "${local.name}-generate"
  user_pool_id                         = aws_cognito_user_pool.main.id
  generate_secret                      = true
  allowed_oauth_flows_user_pool_client = true
  allowed_oauth_flows                  = ["client_credentials"]
  allowed_oauth_scopes                 = [local.scope_generate]
  supported_identity_providers         = ["COGNITO"]
  access_token_validity                = 60
  enable_token_revocation              = true
  prevent_user_existence_errors        = "ENABLED"

  token_validity_units {
    access_token = "minutes"
  }
}

resource "aws_cognito_user_pool_client" "admin" {
  name                                 = "${local.name}-admin"
  user_pool_id                         = aws_cognito_user_pool.main.id
  generate_secret                      = true
  allowed_oauth_flows_user_pool_client = true
  allowed_oauth_flows                  = ["client_credentials"]
  allowed_oauth_scopes                 = [local.scope_generate, local.scope_admin]
  supported_identity_providers         = ["COGNITO"]
  access_token_validity                = 60
  enable_token_revocation              = true
  prevent_user_existence_errors        = "ENABLED"

  token_validity_units {
    access_token = "minutes"
  }
}

# --- API Gateway HTTP API ----------------------------------------------------------------------

resource "aws_apigatewayv2_api" "main" {
  name          = local.name
  protocol_type = "HTTP"
  description   = "Headline Studio API (origin of the CloudFront distribution)"
}

resource "aws_apigatewayv2_authorizer" "cognito" {
  api_id           = aws_apigatewayv2_api.main.id
  name             = "cognito"
  authorizer_type  = "JWT"
  identity_sources = ["$request.header.Authorization"]

  jwt_configuration {
    # Client-credentials access tokens carry client_id instead of aud; API Gateway checks it.
    audience = [aws_cognito_user_pool_client.generate.id, aws_cognito_user_pool_client.admin.id]
    issuer   = "https://cognito-idp.${local.region}.amazonaws.com/${aws_cognito_user_pool.main.id}"
  }
}

resource "aws_apigatewayv2_integration" "lambda" {
  count                  = local.use_lambda ? 1 : 0
  api_id                 = aws_apigatewayv2_api.main.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_alias.live[0].invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 30000
}

resource "aws_apigatewayv2_vpc_link" "main" {
  count              = local.use_ecs ? 1 : 0
  name               = local.name
  subnet_ids         = aws_subnet.private[*].id
  security_group_ids = [aws_security_group.vpc_link[0].id]
}

resource "aws_apigatewayv2_integration" "alb" {
  count                  = local.use_ecs ? 1 : 0
  api_id                 = aws_apigatewayv2_api.main.id
  integration_type       = "HTTP_PROXY"
  integration_method     = "ANY"
  integration_uri        = aws_lb_listener.api[0].arn
  connection_type        = "VPC_LINK"
  connection_id          = aws_apigatewayv2_vpc_link.main[0].id
  payload_format_version = "1.0"
  timeout_milliseconds   = 30000
}

locals {
  integration_id = local.use_lambda ? aws_apigatewayv2_integration.lambda[0].id : aws_apigatewayv2_integration.alb[0].id
}

# Protected routes carry the JWT authorizer and their scope; open ones (health, docs) do not.
# No $default route: any other path is answered 404 by API Gateway without reaching the app.
resource "aws_apigatewayv2_route" "routes" {
  #checkov:skip=CKV_AWS_309:Health probes and the static Swagger UI are open by design (issue 6: /healthz, /readyz open, docs configurable); every generation and admin route has the JWT authorizer.
  for_each             = local.routes
  api_id               = aws_apigatewayv2_api.main.id
  route_key            = each.key
  target               = "integrations/${local.integration_id}"
  authorization_type   = length(each.value) > 0 ? "JWT" : "NONE"
  authorizer_id        = length(each.value) > 0 ? aws_apigatewayv2_authorizer.cognito.id : null
  authorization_scopes = length(each.value) > 0 ? each.value : null
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.main.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_rate_limit    = var.api_throttle_rate
    throttling_burst_limit   = var.api_throttle_burst
    detailed_metrics_enabled = true
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api.arn
    format = jsonencode({
      requestId      = "$context.requestId"
      ip             = "$context.identity.sourceIp"
      requestTime    = "$context.requestTime"
      routeKey       = "$context.routeKey"
      status         = "$context.status"
      latencyMs      = "$context.responseLatency"
      integrationMs  = "$context.integrationLatency"
      integrationErr = "$context.integrationErrorMessage"
      authorizerErr  = "$context.authorizer.error"
      clientId       = "$context.authorizer.claims.client_id"
      responseLength = "$context.responseLength"
    })
  }
}
