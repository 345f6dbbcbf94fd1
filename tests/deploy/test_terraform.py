"""deploy/terraform/aws: formatted, internally consistent (python-hcl2), valid for the AWS
provider and planned with mocked providers when one is installed locally, and checkov-clean."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from tests.deploy import helpers as h

TF = h.TERRAFORM_DIR
# A local provider mirror (terraform init -plugin-dir) makes validate and the plan tests offline.
PLUGIN_DIR = Path(os.environ.get("HEADLINE_TF_PLUGIN_DIR", "/opt/tf-plugins"))
CHECKOV = Path(os.environ.get("HEADLINE_CHECKOV", h.REPO / ".venv-tools" / "bin" / "checkov"))
PROTECTED = {"POST /prompt", "POST /v1/headlines", "GET /v1/models", "GET /metrics"}
OPEN = {"GET /healthz", "GET /readyz", "GET /swagger/{proxy+}"}


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@lru_cache(maxsize=1)
def module() -> dict:
    """{kind: {name: body}} for resource/data ("type.name"), variable, output, locals."""
    import hcl2

    out: dict[str, dict] = {"resource": {}, "data": {}, "variable": {}, "output": {}, "locals": {}}
    for path in sorted(TF.glob("*.tf")):
        with path.open(encoding="utf-8") as fh:
            doc = hcl2.load(fh)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        out[kind][f"{_unquote(rtype)}.{_unquote(name)}"] = body
        for kind in ("variable", "output"):
            for block in doc.get(kind, []):
                for name, body in block.items():
                    out[kind][_unquote(name)] = body
        for block in doc.get("locals", []):
            out["locals"].update({k: v for k, v in block.items() if not k.startswith("__")})
    return out


def _strings(node):
    """Every string value in a parsed block (comments excluded)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "__comments__":
                yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _all_strings():
    m = module()
    for kind in m:
        yield from _strings(m[kind])


def _tf_env() -> dict:
    return {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_CLI_CONFIG_FILE": "/dev/null"}


def test_terraform_fmt():
    terraform = h.which("terraform")
    if terraform is None:
        pytest.skip("terraform binary not installed")
    result = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(TF)],
                            capture_output=True, text=True, timeout=120, env=_tf_env())
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_reference_is_declared_and_every_variable_used():
    declared = set(module()["variable"])
    used = {m for s in _all_strings() for m in re.findall(r"\bvar\.([A-Za-z_][\w-]*)", s)}
    assert used - declared == set(), f"undeclared variables: {sorted(used - declared)}"
    assert declared - used == set(), f"unused variables: {sorted(declared - used)}"


def test_variables_have_descriptions_types_and_validation():
    for name, body in module()["variable"].items():
        assert body.get("description"), f"variable {name}: no description"
        assert body.get("type"), f"variable {name}: no type"
        assert body.get("validation"), f"variable {name}: no validation block"
    for required in ("domain_name", "image_uri", "model_bucket", "model_key", "compute"):
        assert required in module()["variable"]
    assert module()["variable"]["cache_auth_token"].get("sensitive") is True


def test_every_resource_and_local_reference_resolves():
    m = module()
    resources, data, locals_ = set(m["resource"]), set(m["data"]), set(m["locals"])
    for s in _all_strings():
        for rtype, name in re.findall(r"(?<![\w.\-/:])(aws_[a-z0-9_]+)\.([A-Za-z_][\w-]*)", s):
            assert f"{rtype}.{name}" in resources, f"reference to undeclared resource {rtype}.{name} in {s!r}"
        for rtype, name in re.findall(r"\bdata\.([a-z0-9_]+)\.([A-Za-z_][\w-]*)", s):
            assert f"{rtype}.{name}" in data, f"reference to undeclared data source {rtype}.{name}"
        for name in re.findall(r"\blocal\.([A-Za-z_][\w-]*)", s):
            assert name in locals_, f"reference to undeclared local.{name}"


def test_outputs_have_descriptions():
    assert module()["output"]
    for name, body in module()["output"].items():
        assert body.get("description"), f"output {name}: no description"


def test_jwt_authorizer_attached_to_protected_routes():
    m = module()
    authorizer = m["resource"]["aws_apigatewayv2_authorizer.cognito"]
    assert _unquote(authorizer["authorizer_type"]) == "JWT"
    jwt = authorizer["jwt_configuration"][0] if isinstance(authorizer["jwt_configuration"], list) else authorizer["jwt_configuration"]
    assert "cognito-idp" in jwt["issuer"] and "aws_cognito_user_pool.main.id" in jwt["issuer"]
    assert "aws_cognito_user_pool_client" in json.dumps(jwt["audience"])

    routes = {_unquote(k): v for k, v in m["locals"]["routes"].items()}
    assert set(routes) == PROTECTED | OPEN, "routes changed: update PROTECTED/OPEN deliberately"
    for key in PROTECTED:
        assert routes[key], f"{key} must require a scope"
        assert all("local.scope_" in scope for scope in routes[key])
    assert "local.scope_admin" in routes["GET /metrics"][0]
    for key in OPEN:
        assert routes[key] == [], f"{key} is meant to be open"

    # The route resource turns "has scopes" into the JWT authorizer, on every route.
    route = m["resource"]["aws_apigatewayv2_route.routes"]
    assert route["for_each"] == "${local.routes}"
    assert route["authorization_type"] == '${length(each.value) > 0 ? "JWT" : "NONE"}'
    assert route["authorizer_id"] == "${length(each.value) > 0 ? aws_apigatewayv2_authorizer.cognito.id : null}"
    assert route["authorization_scopes"] == "${length(each.value) > 0 ? each.value : null}"
    assert not any("$default" in _unquote(k) for k in routes), "no catch-all route"


def test_every_log_group_has_retention_and_compute_logs_to_them():
    m = module()
    groups = {k: v for k, v in m["resource"].items() if k.startswith("aws_cloudwatch_log_group.")}
    assert len(groups) >= 4
    for name, body in groups.items():
        assert body.get("retention_in_days") == "${var.log_retention_days}", f"{name}: no retention_in_days"
    lam = m["resource"]["aws_lambda_function.api"]
    assert "aws_cloudwatch_log_group.lambda" in json.dumps(lam["logging_config"])
    assert "aws_cloudwatch_log_group.ecs" in json.dumps(m["resource"]["aws_ecs_task_definition.api"])
    stage = m["resource"]["aws_apigatewayv2_stage.default"]
    assert "aws_cloudwatch_log_group.api" in json.dumps(stage["access_log_settings"])


def test_model_bucket_encrypted_versioned_private():
    r = module()["resource"]
    for kind in ("versioning", "server_side_encryption_configuration", "public_access_block", "policy"):
        assert f"aws_s3_bucket_{kind}.models" in r, f"model bucket lacks {kind}"
    pab = r["aws_s3_bucket_public_access_block.models"]
    assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                        "restrict_public_buckets"))


def test_alarms_cover_5xx_latency_throttles_and_lambda_errors():
    r = module()["resource"]
    alarms = {k.split(".", 1)[1] for k in r if k.startswith("aws_cloudwatch_metric_alarm.")}
    assert {"api_5xx_rate", "api_p99_latency", "lambda_throttles", "lambda_errors"} <= alarms
    for name in alarms:
        assert "aws_sns_topic.alarms" in json.dumps(r[f"aws_cloudwatch_metric_alarm.{name}"]) or \
            "local.alarm_actions" in json.dumps(r[f"aws_cloudwatch_metric_alarm.{name}"])


def test_cloudfront_caches_only_docs():
    cf = module()["resource"]["aws_cloudfront_distribution.main"]
    default = cf["default_cache_behavior"][0] if isinstance(cf["default_cache_behavior"], list) else cf["default_cache_behavior"]
    assert "cache_policy.disabled" in default["cache_policy_id"]
    ordered = cf["ordered_cache_behavior"] if isinstance(cf["ordered_cache_behavior"], list) else [cf["ordered_cache_behavior"]]
    for behavior in ordered:
        assert _unquote(behavior["path_pattern"]).startswith("/swagger/")
        assert "POST" not in json.dumps(behavior["allowed_methods"])


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "aws"
    shutil.copytree(TF, work, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return work


@pytest.fixture(scope="module")
def initialized(tmp_path_factory):
    terraform = h.which("terraform")
    if terraform is None:
        pytest.skip("terraform binary not installed")
    if not (PLUGIN_DIR / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.skip(f"no local AWS provider mirror at {PLUGIN_DIR} (no registry access here)")
    work = _workdir(tmp_path_factory.mktemp("tf"))
    result = subprocess.run([terraform, "init", "-backend=false", "-input=false", f"-plugin-dir={PLUGIN_DIR}"],
                            cwd=work, capture_output=True, text=True, timeout=300, env=_tf_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return terraform, work


def test_terraform_validate(initialized):
    terraform, work = initialized
    result = subprocess.run([terraform, "validate", "-no-color"], cwd=work, capture_output=True, text=True,
                            timeout=300, env=_tf_env())
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_plan_tests_with_mocked_providers(initialized):
    """deploy/terraform/aws/tests/plan.tftest.hcl: both compute paths plan; bad inputs refused."""
    terraform, work = initialized
    result = subprocess.run([terraform, "test", "-no-color"], cwd=work, capture_output=True, text=True,
                            timeout=600, env=_tf_env())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "0 failed" in result.stdout


# --- checkov ----------------------------------------------------------------------------------


def _checkov(args: list[str]) -> dict:
    if not CHECKOV.exists():
        pytest.skip(f"checkov not installed at {CHECKOV} (python3 -m venv .venv-tools && "
                    ".venv-tools/bin/pip install checkov==3.3.30)")
    result = subprocess.run([str(CHECKOV), *args, "-o", "json", "--skip-download"],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"})
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def _assert_clean(report: dict):
    # Open-source checkov reports no severities offline, so every failed check counts (stricter
    # than "no HIGH/CRITICAL"); each skip carries its reason in a #checkov:skip comment.
    failed = report["results"]["failed_checks"]
    assert not failed, "\n".join(f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed)
    for skipped in report["results"]["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"
    assert report["summary"]["passed"] > 0


def test_checkov_terraform():
    _assert_clean(_checkov(["-d", str(TF), "--framework", "terraform"]))


def test_checkov_dockerfile():
    _assert_clean(_checkov(["-f", str(h.DOCKERFILE), "--framework", "dockerfile"]))
