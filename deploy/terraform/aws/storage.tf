# --- Encryption key: S3 objects, log groups, Lambda environment, SNS, the cache --------------

resource "aws_kms_key" "main" {
  description             = "${local.name}: model artifacts, logs, cache, alarms"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "main" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.main.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy's "*" resource means this key only; write access is limited to the account root (IAM decides) and to the two services, with an encryption-context condition for logs.
  #checkov:skip=CKV_AWS_356:Same: in a KMS key policy the resource "*" is the key the policy is attached to.
  #checkov:skip=CKV_AWS_109:Same: the account-root statement is AWS's default key policy, which delegates key administration to IAM instead of locking the key.
  # Key administration stays with the account (IAM policies decide who); services below may
  # only use the key for their own resources.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublishToEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
  }
}

# --- Model artifacts -------------------------------------------------------------------------

resource "aws_s3_bucket" "models" {
  #checkov:skip=CKV_AWS_18:Access logging needs a separate log bucket; object reads are already recorded by CloudTrail data events where the account enables them, and only this module's roles can read.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage for artifacts that are rebuilt by `headline train` and kept versioned; enable it per organisation policy.
  #checkov:skip=CKV2_AWS_62:No consumer reacts to uploads: a new run is deployed by changing model_key, not by an S3 event.
  bucket = var.model_bucket
}

resource "aws_s3_bucket_versioning" "models" {
  bucket = aws_s3_bucket.models.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "models" {
  bucket = aws_s3_bucket.models.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "models" {
  bucket                  = aws_s3_bucket.models.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "models" {
  bucket = aws_s3_bucket.models.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "models" {
  bucket = aws_s3_bucket.models.id

  rule {
    id     = "old-versions-and-aborted-uploads"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_policy" "models" {
  bucket     = aws_s3_bucket.models.id
  policy     = data.aws_iam_policy_document.models_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.models]
}

data "aws_iam_policy_document" "models_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.models.arn, "${aws_s3_bucket.models.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

# --- Response cache --------------------------------------------------------------------------
# ElastiCache (Redis), not DynamoDB: the service's cache is Redis code (TTL entries, SET NX
# single-flight locks, per-key rate-limit counters), so the same code path runs locally, in
# compose and here; DynamoDB would need a second cache implementation and has no cheap lock
# with expiry. The price is a VPC for the compute (deploy/README.md: costs).

resource "aws_elasticache_subnet_group" "cache" {
  name       = "${local.name}-cache"
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_elasticache_replication_group" "cache" {
  #checkov:skip=CKV2_AWS_50:One node by default (cache_replicas = 1): losing the cache costs regeneration only, and the app serves uncached while Redis is down; set cache_replicas >= 2 for Multi-AZ failover.
  #checkov:skip=CKV_AWS_134:A response cache is rebuilt by regeneration; snapshots would only cost storage and restore stale entries.
  replication_group_id       = "${local.name}-cache"
  description                = "${local.name} response cache"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.cache_node_type
  port                       = 6379
  num_cache_clusters         = var.cache_replicas
  automatic_failover_enabled = var.cache_replicas > 1
  multi_az_enabled           = var.cache_replicas > 1
  subnet_group_name          = aws_elasticache_subnet_group.cache.name
  security_group_ids         = [aws_security_group.cache.id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.main.arn
  transit_encryption_enabled = true
  auth_token                 = var.cache_auth_token
  snapshot_retention_limit   = 0
  auto_minor_version_upgrade = true
  apply_immediately          = false
  maintenance_window         = "sun:03:00-sun:04:00"
}
