# --- Log groups: every one with a retention and (in the main region) the module's KMS key ------

resource "aws_cloudwatch_log_group" "lambda" {
  count             = local.use_lambda ? 1 : 0
  name              = "/aws/lambda/${local.name}-api"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_cloudwatch_log_group" "ecs" {
  count             = local.use_ecs ? 1 : 0
  name              = "/ecs/${local.name}-api"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_cloudwatch_log_group" "api" {
  name              = "/aws/apigateway/${local.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_cloudwatch_log_group" "flow" {
  name              = "/aws/vpc/${local.name}/flow"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

# WAF for CloudFront logs to us-east-1 and needs the aws-waf-logs- prefix.
resource "aws_cloudwatch_log_group" "waf" {
  #checkov:skip=CKV_AWS_158:This group must live in us-east-1 (CloudFront-scope WAF) while the module's KMS key is regional; CloudWatch encrypts it with its own key, and the Authorization header is redacted.
  provider          = aws.us_east_1
  name              = "aws-waf-logs-${local.name}"
  retention_in_days = var.log_retention_days
}

# --- Alarms -> SNS -------------------------------------------------------------------------------

resource "aws_sns_topic" "alarms" {
  name              = "${local.name}-alarms"
  kms_master_key_id = aws_kms_key.main.arn
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alarm_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  api_dimensions = {
    ApiId = aws_apigatewayv2_api.main.id
    Stage = aws_apigatewayv2_stage.default.name
  }
  alarm_actions = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "api_5xx_rate" {
  alarm_name          = "${local.name}-api-5xx-rate"
  alarm_description   = "More than ${var.alarm_5xx_percent}% of API responses were 5xx over 5 minutes."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_5xx_percent
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  metric_query {
    id          = "rate"
    expression  = "IF(requests > 0, 100 * errors / requests, 0)"
    label       = "5xx %"
    return_data = true
  }

  metric_query {
    id = "errors"
    metric {
      namespace   = "AWS/ApiGateway"
      metric_name = "5xx"
      dimensions  = local.api_dimensions
      period      = 300
      stat        = "Sum"
    }
  }

  metric_query {
    id = "requests"
    metric {
      namespace   = "AWS/ApiGateway"
      metric_name = "Count"
      dimensions  = local.api_dimensions
      period      = 300
      stat        = "Sum"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "api_p99_latency" {
  alarm_name          = "${local.name}-api-p99-latency"
  alarm_description   = "API p99 latency above ${var.alarm_p99_latency_ms} ms for 15 minutes."
  namespace           = "AWS/ApiGateway"
  metric_name         = "Latency"
  dimensions          = local.api_dimensions
  extended_statistic  = "p99"
  period              = 300
  evaluation_periods  = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_p99_latency_ms
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "lambda_errors" {
  count               = local.use_lambda ? 1 : 0
  alarm_name          = "${local.name}-lambda-errors"
  alarm_description   = "The API Lambda raised errors (crashes, timeouts, out of memory)."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.api[0].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "lambda_throttles" {
  count               = local.use_lambda ? 1 : 0
  alarm_name          = "${local.name}-lambda-throttles"
  alarm_description   = "Requests were throttled at the reserved concurrency (raise lambda_reserved_concurrency or move to fargate)."
  namespace           = "AWS/Lambda"
  metric_name         = "Throttles"
  dimensions          = { FunctionName = aws_lambda_function.api[0].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "ecs_unhealthy" {
  count               = local.use_ecs ? 1 : 0
  alarm_name          = "${local.name}-ecs-healthy-tasks"
  alarm_description   = "Fewer healthy API tasks behind the ALB than desired."
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HealthyHostCount"
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 5
  comparison_operator = "LessThanThreshold"
  threshold           = var.fargate_desired_count
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  dimensions = {
    TargetGroup  = aws_lb_target_group.api[0].arn_suffix
    LoadBalancer = aws_lb.api[0].arn_suffix
  }
}

# --- Dashboard -------------------------------------------------------------------------------------

locals {
  api_metric_dims = ["ApiId", aws_apigatewayv2_api.main.id, "Stage", aws_apigatewayv2_stage.default.name]
  # Encoded, because the two branches have different shapes (a conditional needs one type).
  compute_widget = local.use_lambda ? jsonencode({
    title = "Lambda"
    metrics = [
      ["AWS/Lambda", "Invocations", "FunctionName", "${local.name}-api", { stat = "Sum" }],
      [".", "Errors", ".", ".", { stat = "Sum" }],
      [".", "Throttles", ".", ".", { stat = "Sum" }],
      [".", "ConcurrentExecutions", ".", ".", { stat = "Maximum" }],
      [".", "Duration", ".", ".", { stat = "p99", yAxis = "right" }],
    ]
    }) : jsonencode({
    title = "ECS / ALB"
    metrics = [
      ["AWS/ECS", "CPUUtilization", "ClusterName", local.name, "ServiceName", "${local.name}-api", { stat = "Average" }],
      [".", "MemoryUtilization", ".", ".", ".", ".", { stat = "Average" }],
    ]
  })
}

resource "aws_cloudwatch_dashboard" "main" {
  dashboard_name = local.name
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title  = "API requests and errors"
          region = local.region
          view   = "timeSeries"
          metrics = [
            concat(["AWS/ApiGateway", "Count"], local.api_metric_dims, [{ stat = "Sum" }]),
            concat(["AWS/ApiGateway", "4xx"], local.api_metric_dims, [{ stat = "Sum" }]),
            concat(["AWS/ApiGateway", "5xx"], local.api_metric_dims, [{ stat = "Sum" }]),
          ]
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title  = "API latency (ms)"
          region = local.region
          view   = "timeSeries"
          metrics = [
            concat(["AWS/ApiGateway", "Latency"], local.api_metric_dims, [{ stat = "p50" }]),
            concat(["AWS/ApiGateway", "Latency"], local.api_metric_dims, [{ stat = "p99" }]),
            concat(["AWS/ApiGateway", "IntegrationLatency"], local.api_metric_dims, [{ stat = "p99" }]),
          ]
        }
      },
      {
        type       = "metric", x = 0, y = 6, width = 12, height = 6
        properties = merge(jsondecode(local.compute_widget), { region = local.region, view = "timeSeries" })
      },
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title  = "Response cache (ElastiCache)"
          region = local.region
          view   = "timeSeries"
          metrics = [
            ["AWS/ElastiCache", "CacheHits", "ReplicationGroupId", aws_elasticache_replication_group.cache.id, { stat = "Sum" }],
            [".", "CacheMisses", ".", ".", { stat = "Sum" }],
            [".", "EngineCPUUtilization", ".", ".", { stat = "Average", yAxis = "right" }],
          ]
        }
      },
      {
        type = "alarm", x = 0, y = 12, width = 24, height = 3
        properties = {
          title = "Alarms"
          alarms = concat(
            [aws_cloudwatch_metric_alarm.api_5xx_rate.arn, aws_cloudwatch_metric_alarm.api_p99_latency.arn],
            aws_cloudwatch_metric_alarm.lambda_errors[*].arn,
            aws_cloudwatch_metric_alarm.lambda_throttles[*].arn,
            aws_cloudwatch_metric_alarm.ecs_unhealthy[*].arn,
          )
        }
      },
    ]
  })
}
