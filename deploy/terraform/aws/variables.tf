variable "project_name" {
  description = "Short name used as a prefix for every resource (lower-case letters, digits, hyphens)."
  type        = string
  default     = "headline-studio"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,23}$", var.project_name))
    error_message = "project_name must be 3-24 characters: lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "environment" {
  description = "Deployment stage; part of resource names and tags."
  type        = string
  default     = "prod"

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be one of dev, staging, prod."
  }
}

variable "aws_region" {
  description = "Region of the API, Lambda, cache, bucket and logs (CloudFront's certificate and WAF always go to us-east-1)."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region must look like eu-west-1."
  }
}

variable "domain_name" {
  description = "Public host name of the API, e.g. headlines.example.com. Must be inside hosted_zone_name."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain_name))
    error_message = "domain_name must be a lower-case DNS name such as headlines.example.com."
  }
}

variable "hosted_zone_name" {
  description = "Existing public Route 53 hosted zone that holds domain_name, e.g. example.com."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}\\.?$", var.hosted_zone_name))
    error_message = "hosted_zone_name must be a DNS zone name such as example.com."
  }
}

variable "image_uri" {
  description = "ECR URI of the image built from deploy/docker/Dockerfile with --target lambda, pinned by tag or digest."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com/[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_.-]{1,128}|@sha256:[a-f0-9]{64})$", var.image_uri))
    error_message = "image_uri must be an ECR image URI with a tag or digest: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/headline-studio:1.0.0."
  }
}

variable "model_bucket" {
  description = "Name of the S3 bucket created for model artifacts (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.model_bucket)) && !can(regex("\\.\\.", var.model_bucket))
    error_message = "model_bucket must be a valid S3 bucket name: 3-63 lower-case letters, digits, dots and hyphens."
  }
}

variable "model_key" {
  description = "Key of the served run in model_bucket: a run folder packed as .tar.gz (see deploy/README.md)."
  type        = string
  default     = "runs/latest.tar.gz"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()/-]+\\.tar\\.gz$", var.model_key)) && !startswith(var.model_key, "/")
    error_message = "model_key must be a relative S3 key ending in .tar.gz, e.g. runs/20250101-120000-headline.tar.gz."
  }
}

variable "compute" {
  description = "Where the API runs: \"lambda\" (scales to zero, pay per request) or \"fargate\" (ECS behind an internal ALB, for sustained traffic)."
  type        = string
  default     = "lambda"

  validation {
    condition     = contains(["lambda", "fargate"], var.compute)
    error_message = "compute must be \"lambda\" or \"fargate\"."
  }
}

variable "lambda_memory_mb" {
  description = "Lambda memory in MB; CPU grows with it (about 1 vCPU per 1769 MB). The fp32 135M model needs about 1.5 GB."
  type        = number
  default     = 3008

  validation {
    condition     = var.lambda_memory_mb >= 2048 && var.lambda_memory_mb <= 10240
    error_message = "lambda_memory_mb must be between 2048 and 10240."
  }
}

variable "lambda_timeout_s" {
  description = "Lambda timeout in seconds. API Gateway gives up after 30 s; a longer timeout lets a cold start finish loading the model for the next request."
  type        = number
  default     = 90

  validation {
    condition     = var.lambda_timeout_s >= 30 && var.lambda_timeout_s <= 900
    error_message = "lambda_timeout_s must be between 30 and 900."
  }
}

variable "lambda_reserved_concurrency" {
  description = "Most concurrent Lambda containers (each holds one model); caps cost and protects the cache."
  type        = number
  default     = 20

  validation {
    condition     = var.lambda_reserved_concurrency >= 1 && var.lambda_reserved_concurrency <= 1000
    error_message = "lambda_reserved_concurrency must be between 1 and 1000."
  }
}

variable "lambda_provisioned_concurrency" {
  description = "Containers kept warm (no cold start; billed while idle). 0 = none."
  type        = number
  default     = 0

  validation {
    condition     = var.lambda_provisioned_concurrency >= 0 && var.lambda_provisioned_concurrency <= 100
    error_message = "lambda_provisioned_concurrency must be between 0 and 100."
  }
}

variable "fargate_desired_count" {
  description = "ECS tasks when compute = \"fargate\" (two or more for availability)."
  type        = number
  default     = 2

  validation {
    condition     = var.fargate_desired_count >= 1 && var.fargate_desired_count <= 50
    error_message = "fargate_desired_count must be between 1 and 50."
  }
}

variable "fargate_cpu" {
  description = "CPU units per Fargate task (1024 = 1 vCPU)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([512, 1024, 2048, 4096], var.fargate_cpu)
    error_message = "fargate_cpu must be 512, 1024, 2048 or 4096."
  }
}

variable "fargate_memory" {
  description = "Memory per Fargate task in MiB; must be a valid pairing with fargate_cpu."
  type        = number
  default     = 3072

  validation {
    condition     = var.fargate_memory >= 2048 && var.fargate_memory <= 30720 && var.fargate_memory % 1024 == 0
    error_message = "fargate_memory must be a multiple of 1024 between 2048 and 30720."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC created for the cache, the Lambda ENIs and the Fargate tasks."
  type        = string
  default     = "10.60.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR of /20 or larger."
  }
}

variable "cache_node_type" {
  description = "ElastiCache node type of the response cache."
  type        = string
  default     = "cache.t4g.micro"

  validation {
    condition     = can(regex("^cache\\.[a-z0-9]+\\.[a-z0-9]+$", var.cache_node_type))
    error_message = "cache_node_type must look like cache.t4g.micro."
  }
}

variable "cache_replicas" {
  description = "Cache nodes: 1 (cheapest; a lost cache only costs regeneration) or 2-3 for automatic failover."
  type        = number
  default     = 1

  validation {
    condition     = var.cache_replicas >= 1 && var.cache_replicas <= 3
    error_message = "cache_replicas must be 1, 2 or 3."
  }
}

variable "cache_auth_token" {
  description = "Redis AUTH token of the response cache. Pass it from the environment (export TF_VAR_cache_auth_token=$(openssl rand -hex 32)), never in a committed file."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9]{32,128}$", var.cache_auth_token))
    error_message = "cache_auth_token must be 32-128 letters and digits (ElastiCache forbids most symbols; none are needed)."
  }
}

variable "cognito_domain_prefix" {
  description = "Prefix of the Cognito hosted domain that issues tokens: https://<prefix>.auth.<region>.amazoncognito.com."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", var.cognito_domain_prefix)) && !can(regex("aws|amazon|cognito", var.cognito_domain_prefix))
    error_message = "cognito_domain_prefix must be lower-case letters, digits and hyphens, and must not contain aws, amazon or cognito."
  }
}

variable "api_throttle_rate" {
  description = "Steady requests per second API Gateway accepts across all clients."
  type        = number
  default     = 50

  validation {
    condition     = var.api_throttle_rate >= 1 && var.api_throttle_rate <= 10000
    error_message = "api_throttle_rate must be between 1 and 10000."
  }
}

variable "api_throttle_burst" {
  description = "Burst of requests API Gateway accepts above the steady rate."
  type        = number
  default     = 100

  validation {
    condition     = var.api_throttle_burst >= 1 && var.api_throttle_burst <= 5000
    error_message = "api_throttle_burst must be between 1 and 5000."
  }
}

variable "waf_rate_limit_per_ip" {
  description = "Requests per IP per 5 minutes before the CloudFront WAF blocks it."
  type        = number
  default     = 1000

  validation {
    condition     = var.waf_rate_limit_per_ip >= 100 && var.waf_rate_limit_per_ip <= 2000000000
    error_message = "waf_rate_limit_per_ip must be at least 100 (the WAF minimum)."
  }
}

variable "cloudfront_price_class" {
  description = "CloudFront edge locations used: PriceClass_100 (cheapest), PriceClass_200 or PriceClass_All."
  type        = string
  default     = "PriceClass_100"

  validation {
    condition     = contains(["PriceClass_100", "PriceClass_200", "PriceClass_All"], var.cloudfront_price_class)
    error_message = "cloudfront_price_class must be PriceClass_100, PriceClass_200 or PriceClass_All."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps every log group of this module (a year by default, for incident and audit look-backs)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch accepts (1, 3, 5, 7, 14, 30, 60, 90, ..., 3653)."
  }
}

variable "alarm_email" {
  description = "E-mail subscribed to the alarm topic (confirm the subscription mail). Empty = no subscription."
  type        = string
  default     = ""

  validation {
    condition     = var.alarm_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be an e-mail address or empty."
  }
}

variable "alarm_5xx_percent" {
  description = "Alarm when more than this percentage of API responses are 5xx over 5 minutes."
  type        = number
  default     = 1

  validation {
    condition     = var.alarm_5xx_percent > 0 && var.alarm_5xx_percent <= 100
    error_message = "alarm_5xx_percent must be in (0, 100]."
  }
}

variable "alarm_p99_latency_ms" {
  description = "Alarm when the API's p99 latency exceeds this many milliseconds for 15 minutes."
  type        = number
  default     = 5000

  validation {
    condition     = var.alarm_p99_latency_ms >= 100 && var.alarm_p99_latency_ms <= 30000
    error_message = "alarm_p99_latency_ms must be between 100 and 30000 (API Gateway's limit)."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.tags) : length(k) <= 128 && !startswith(lower(k), "aws:")])
    error_message = "Tag keys must be at most 128 characters and must not start with aws:."
  }
}
