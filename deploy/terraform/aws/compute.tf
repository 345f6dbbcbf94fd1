# The API runs from one image (deploy/docker/Dockerfile, target `lambda`) on either path:
# Lambda calls service.lambda_handler.handler; Fargate overrides the entry point to run Gunicorn.

locals {
  # Environment shared by both paths; the run is fetched from S3 into /tmp at start.
  app_environment = {
    HEADLINE_CONFIG_SET   = local.config_set
    HEADLINE_REDIS_URL    = local.redis_url
    HEADLINE_MODEL_BUCKET = aws_s3_bucket.models.id
    HEADLINE_MODEL_KEY    = var.model_key
  }

  # 123456789012.dkr.ecr.eu-west-1.amazonaws.com/headline-studio:tag -> repository ARN
  ecr_repository_arn = format(
    "arn:%s:ecr:%s:%s:repository/%s",
    local.partition,
    split(".", var.image_uri)[3],
    split(".", var.image_uri)[0],
    regex("^[^/]+/([^:@]+)", var.image_uri)[0],
  )
}

# --- Lambda (compute = "lambda") --------------------------------------------------------------

resource "aws_lambda_function" "api" {
  #checkov:skip=CKV_AWS_116:API Gateway invokes synchronously and gets the error back; a dead-letter queue only applies to asynchronous invocations.
  #checkov:skip=CKV_AWS_272:Code signing is not supported for container-image functions; the image is pinned by image_uri (tag or digest) in ECR.
  count                          = local.use_lambda ? 1 : 0
  function_name                  = "${local.name}-api"
  description                    = "Headline Studio API (Flask app via apig-wsgi)"
  package_type                   = "Image"
  image_uri                      = var.image_uri
  role                           = aws_iam_role.lambda[0].arn
  memory_size                    = var.lambda_memory_mb
  timeout                        = var.lambda_timeout_s
  reserved_concurrent_executions = var.lambda_reserved_concurrency
  publish                        = true
  kms_key_arn                    = aws_kms_key.main.arn
  architectures                  = ["x86_64"]

  # The fetched run (~550 MB of fp32 weights) lives in /tmp.
  ephemeral_storage {
    size = 2048
  }

  environment {
    variables = local.app_environment
  }

  vpc_config {
    subnet_ids         = aws_subnet.private[*].id
    security_group_ids = [aws_security_group.app.id]
  }

  tracing_config {
    mode = "Active"
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.lambda[0].name
  }

  depends_on = [aws_iam_role_policy.lambda]
}

resource "aws_lambda_alias" "live" {
  count            = local.use_lambda ? 1 : 0
  name             = "live"
  function_name    = aws_lambda_function.api[0].function_name
  function_version = aws_lambda_function.api[0].version
}

resource "aws_lambda_provisioned_concurrency_config" "live" {
  count                             = local.use_lambda && var.lambda_provisioned_concurrency > 0 ? 1 : 0
  function_name                     = aws_lambda_function.api[0].function_name
  qualifier                         = aws_lambda_alias.live[0].name
  provisioned_concurrent_executions = var.lambda_provisioned_concurrency
}

resource "aws_lambda_permission" "api_gateway" {
  count         = local.use_lambda ? 1 : 0
  statement_id  = "AllowApiGatewayInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.api[0].function_name
  qualifier     = aws_lambda_alias.live[0].name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.main.execution_arn}/*/*"
}

# --- ECS Fargate behind an internal ALB (compute = "fargate") ---------------------------------

resource "aws_ecs_cluster" "main" {
  count = local.use_ecs ? 1 : 0
  name  = local.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_task_definition" "api" {
  count                    = local.use_ecs ? 1 : 0
  family                   = "${local.name}-api"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.fargate_cpu
  memory                   = var.fargate_memory
  execution_role_arn       = aws_iam_role.ecs_execution[0].arn
  task_role_arn            = aws_iam_role.ecs_task[0].arn

  ephemeral_storage {
    size_in_gib = 21
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = "api"
    image                  = var.image_uri
    essential              = true
    entryPoint             = ["/usr/local/bin/entrypoint"]
    command                = ["api"]
    readonlyRootFilesystem = true
    user                   = "10001:10001"
    portMappings           = [{ containerPort = 8000, protocol = "tcp" }]
    mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    environment = [for k, v in merge(local.app_environment, {
      HEADLINE_BIND    = "0.0.0.0:8000"
      HEADLINE_WORKERS = tostring(max(1, floor(var.fargate_cpu / 1024)))
      # The ALB is the only client (security group), so its X-Forwarded-* are trusted.
      GUNICORN_CMD_ARGS = "--forwarded-allow-ips=*"
    }) : { name = k, value = v }]
    healthCheck = {
      command     = ["CMD", "python", "/usr/local/bin/healthcheck", "http://127.0.0.1:8000/readyz"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 180
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.ecs[0].name
        awslogs-region        = local.region
        awslogs-stream-prefix = "api"
      }
    }
  }])
}

resource "aws_ecs_service" "api" {
  count                             = local.use_ecs ? 1 : 0
  name                              = "${local.name}-api"
  cluster                           = aws_ecs_cluster.main[0].id
  task_definition                   = aws_ecs_task_definition.api[0].arn
  desired_count                     = var.fargate_desired_count
  launch_type                       = "FARGATE"
  health_check_grace_period_seconds = 240
  propagate_tags                    = "SERVICE"

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.app.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.api[0].arn
    container_name   = "api"
    container_port   = 8000
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  depends_on = [aws_lb_listener.api]
}

resource "aws_lb" "api" {
  #checkov:skip=CKV_AWS_91:Internal ALB reached only through the API Gateway VPC link; requests are logged by API Gateway's access log (with request id) and CloudFront.
  #checkov:skip=CKV_AWS_150:Deletion protection would make the documented `terraform destroy` fail; the ALB holds no data and is recreated in minutes.
  #checkov:skip=CKV2_AWS_20:Internal ALB with one HTTP listener behind the VPC link: there is no HTTPS listener to redirect to, and viewers are redirected to HTTPS at CloudFront.
  #checkov:skip=CKV2_AWS_28:WAF sits in front at CloudFront; this ALB is internal and not reachable from the internet.
  count                      = local.use_ecs ? 1 : 0
  name                       = substr("${local.name}-api", 0, 32)
  internal                   = true
  load_balancer_type         = "application"
  subnets                    = aws_subnet.private[*].id
  security_groups            = [aws_security_group.alb[0].id]
  drop_invalid_header_fields = true
  idle_timeout               = 60
}

resource "aws_lb_target_group" "api" {
  #checkov:skip=CKV_AWS_378:ALB to task traffic stays inside the private subnets between two security groups; Gunicorn serves plain HTTP, as behind Nginx locally.
  count                = local.use_ecs ? 1 : 0
  name                 = substr("${local.name}-api", 0, 32)
  port                 = 8000
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = aws_vpc.main.id
  deregistration_delay = 40

  health_check {
    path                = "/readyz"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "api" {
  #checkov:skip=CKV_AWS_2:Internal listener behind the API Gateway VPC link; TLS ends at CloudFront and API Gateway, and this hop never leaves the VPC.
  #checkov:skip=CKV_AWS_103:Same listener: plain HTTP inside the VPC only, so no TLS policy applies.
  count             = local.use_ecs ? 1 : 0
  load_balancer_arn = aws_lb.api[0].arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api[0].arn
  }
}
