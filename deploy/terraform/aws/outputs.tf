output "url" {
  description = "Public base URL of the API (Swagger UI at /swagger/index.html)."
  value       = "https://${var.domain_name}"
}

output "cloudfront_domain_name" {
  description = "CloudFront distribution host name (the Route 53 alias target)."
  value       = aws_cloudfront_distribution.main.domain_name
}

output "cloudfront_distribution_id" {
  description = "CloudFront distribution id (for cache invalidations after a docs change)."
  value       = aws_cloudfront_distribution.main.id
}

output "api_gateway_endpoint" {
  description = "API Gateway's own endpoint (the CloudFront origin)."
  value       = aws_apigatewayv2_api.main.api_endpoint
}

output "token_url" {
  description = "OAuth2 token endpoint: POST grant_type=client_credentials with a client id/secret to get an access token."
  value       = "https://${aws_cognito_user_pool_domain.main.domain}.auth.${local.region}.amazoncognito.com/oauth2/token"
}

output "cognito_user_pool_id" {
  description = "Cognito user pool that issues the API's tokens."
  value       = aws_cognito_user_pool.main.id
}

output "generate_client_id" {
  description = "App client with the generate scope (read its secret with the command in deploy/README.md)."
  value       = aws_cognito_user_pool_client.generate.id
}

output "admin_client_id" {
  description = "App client with the generate and admin scopes."
  value       = aws_cognito_user_pool_client.admin.id
}

output "model_bucket" {
  description = "Bucket to upload runs to (aws s3 cp run.tar.gz s3://<bucket>/<model_key>)."
  value       = aws_s3_bucket.models.id
}

output "model_uri" {
  description = "S3 URI of the run the API serves."
  value       = "s3://${aws_s3_bucket.models.id}/${var.model_key}"
}

output "compute" {
  description = "Which compute path is active."
  value       = var.compute
}

output "lambda_function_name" {
  description = "API Lambda function (compute = lambda), else null."
  value       = try(aws_lambda_function.api[0].function_name, null)
}

output "ecs_service_name" {
  description = "ECS service (compute = fargate), else null."
  value       = try(aws_ecs_service.api[0].name, null)
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms publish to."
  value       = aws_sns_topic.alarms.arn
}

output "dashboard_url" {
  description = "CloudWatch dashboard of the API."
  value       = "https://${local.region}.console.aws.amazon.com/cloudwatch/home?region=${local.region}#dashboards:name=${aws_cloudwatch_dashboard.main.dashboard_name}"
}

output "redis_endpoint" {
  description = "Primary endpoint of the response cache (TLS, auth token in the function environment)."
  value       = aws_elasticache_replication_group.cache.primary_endpoint_address
}
