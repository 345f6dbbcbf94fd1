"""docker-compose.yml: valid by the Compose Specification, and consistent with the repo's
Nginx, Gunicorn, Prometheus and Grafana files and with the app itself."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy import helpers as h

SCHEMA = Path(__file__).with_name("compose-spec.json")
LONG_RUNNING = ("redis", "api1", "api2", "nginx", "prometheus", "grafana")


def test_compose_file_valid_against_compose_spec():
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    # Both as written (strings with ${VARS}) and as Compose sees it after interpolation.
    for document in (h.compose_raw(), h.compose()):
        errors = sorted(validator_cls(schema).iter_errors(document), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file():
    """The schema check has teeth: a typo in a key is caught."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    broken = h.compose()
    broken = {**broken, "services": {**broken["services"], "redis": {**broken["services"]["redis"], "helthcheck": {}}}}
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_services_present_and_trainer_behind_profile():
    services = h.services()
    assert set(LONG_RUNNING) <= set(services)
    assert services["trainer"]["profiles"] == ["train"]
    for name in LONG_RUNNING:
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"


@pytest.mark.parametrize("name", (*LONG_RUNNING, "trainer"))
def test_service_has_healthcheck_restart_policy_and_limits(name):
    service = h.services()[name]
    check = service.get("healthcheck")
    assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{name}: healthcheck.{key} missing"
    expected_restart = "no" if name == "trainer" else "unless-stopped"
    assert service.get("restart") == expected_restart
    limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
    assert limits.get("cpus") and limits.get("memory"), f"{name}: no cpu/memory limits"
    float(limits["cpus"])  # interpolated to a number
    assert re.fullmatch(r"\d+[kmg]?b?", str(limits["memory"]).lower()), limits["memory"]


def test_depends_on_uses_health_conditions_on_existing_services():
    services = h.services()
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec["condition"] in ("service_healthy", "service_started")
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"
    assert services["api1"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert {d for d, s in services["nginx"]["depends_on"].items() if s["condition"] == "service_healthy"} == set(
        h.API_SERVICES
    )


def test_api_services_run_gunicorn_with_runs_read_only():
    for name in h.API_SERVICES:
        service = h.services()[name]
        assert service["command"] == ["api"]  # entrypoint: gunicorn -c deploy/gunicorn.conf.py service:create_app()
        assert service["environment"]["HEADLINE_BIND"] == f"0.0.0.0:{h.API_PORT}"
        mounts = {v.split(":")[1]: v for v in service["volumes"]}
        assert mounts["/app/runs"].endswith(":ro"), "runs must be mounted read-only in the API"
        assert "/app/.cache/models" in mounts
        assert mounts["/app/deploy/gunicorn.conf.py"].startswith("./deploy/gunicorn.conf.py:")
        assert h.healthcheck_urls(service) == [f"http://127.0.0.1:{h.API_PORT}/readyz"]
        assert service.get("read_only") is True and "ports" not in service
    trainer_runs = [v for v in h.services()["trainer"]["volumes"] if v.split(":")[1] == "/app/runs"]
    assert trainer_runs and not trainer_runs[0].endswith(":ro"), "the trainer writes runs"


def test_entrypoint_runs_the_app_factory_with_the_repo_gunicorn_conf():
    text = (h.REPO / "deploy" / "docker" / "entrypoint.sh").read_text(encoding="utf-8")
    assert "exec gunicorn -c deploy/gunicorn.conf.py" in text and "'service:create_app()'" in text
    if not h.GUNICORN_CONF.exists():
        pytest.skip("deploy/gunicorn.conf.py not written yet (issue 3)")
    conf = h.GUNICORN_CONF.read_text(encoding="utf-8")
    for var in ("HEADLINE_BIND", "HEADLINE_WORKERS"):
        assert var in conf, f"compose sets {var}, which gunicorn.conf.py does not read"


def test_named_volumes_declared_and_bind_sources_exist():
    data = h.compose()
    declared = set(data["volumes"])
    used = set()
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                path = (h.REPO / source).resolve()
                if source.startswith("./data"):
                    # The trainer's data folder (data/sample_news.jsonl) belongs to the trainer issue.
                    continue
                if source == "./certs":
                    # Made by `make certs` (deploy/certs.sh), git-ignored: never in a checkout.
                    assert "/certs/" in (h.REPO / ".gitignore").read_text(encoding="utf-8")
                    continue
                assert path.exists(), f"{name}: bind source {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared under volumes:"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"
    assert {"runs", "model-cache"} <= declared


def test_secrets_declared_and_match_the_keys_file_setting():
    data = h.compose()
    for name in h.API_SERVICES:
        for secret in data["services"][name].get("secrets", []):
            assert secret in data["secrets"]
    config_set = h.services()["api1"]["environment"]["HEADLINE_CONFIG_SET"]
    assert "service.auth.keys_file=/run/secrets/api_keys" in config_set.split()


def test_every_variable_is_in_env_example_and_no_stale_ones():
    used = h.variables_used(h.COMPOSE_FILE.read_text(encoding="utf-8"))
    # COMPOSE_* variables configure the compose CLI itself (read from .env), not the file.
    documented = {k for k in h.env_example() if not k.startswith("COMPOSE_")}
    assert used - documented == set(), f"add to .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f".env.example lists unused: {sorted(documented - used)}"


def test_interpolation_helper_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert h.interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$HOME", env) == "x d  d $HOME"
    with pytest.raises(KeyError):
        h.interpolate("${UNSET:?needed}", env)


def test_compose_config_overrides_render_a_valid_config(tmp_path):
    """HEADLINE_CONFIG_SET (applied by the entrypoint) yields a config the schema accepts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_config", h.REPO / "deploy/docker/render_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = h.services()["api1"]["environment"]
    overrides = env["HEADLINE_CONFIG_SET"] + f" service.cache.redis_url={env['HEADLINE_REDIS_URL']}"
    out = tmp_path / "config.yml"
    module.render(str(h.REPO / "config" / "config.yml"), str(out), overrides)

    from config import load_config

    cfg = load_config(out)
    assert cfg.service.auth.enabled is True
    assert cfg.service.cache.redis_url == "redis://redis:6379/0"
    assert cfg.service.auth.protect_metrics is False
    # Everything else still comes from config.yml.
    base = load_config()
    assert cfg.generation == base.generation and cfg.model == base.model
    assert "# Headline Studio configuration" in out.read_text(encoding="utf-8")  # comments kept


def test_prometheus_scrapes_every_api_service():
    prom = yaml.safe_load((h.REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    api = jobs["headline-api"]
    assert api["metrics_path"] == "/metrics"
    targets = {t for sc in api["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{h.API_PORT}" for name in h.API_SERVICES}
    mount = h.services()["prometheus"]["volumes"][0]
    assert mount.startswith("./deploy/prometheus/prometheus.yml:")


# --- Nginx -----------------------------------------------------------------------------------


def _nginx_text() -> str:
    if not h.NGINX_CONF.exists():
        pytest.skip("deploy/nginx/nginx.conf not written yet (issue 3)")
    return h.NGINX_CONF.read_text(encoding="utf-8")


def test_nginx_upstreams_are_the_compose_api_services():
    servers = h.nginx_upstream_servers(_nginx_text())
    assert servers, "no upstream servers found in nginx.conf"
    services = h.services()
    for host, port in servers:
        assert host in services, f"nginx upstream {host} is not a compose service"
        assert port == h.API_PORT and services[host]["environment"]["HEADLINE_BIND"].endswith(f":{port}")
        assert str(port) in services[host]["expose"]
    assert {host for host, _ in servers} == set(h.API_SERVICES), "every API instance is behind Nginx"


def test_nginx_listen_ports_are_published_and_config_mounted():
    text = _nginx_text()
    nginx = h.services()["nginx"]
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    # The TLS servers: tls.conf as is, in the folder nginx.conf includes, with the certificates
    # where tls.conf looks for them.
    assert "include tls.d/*.conf;" in text
    assert "./deploy/nginx/tls.conf:/etc/nginx/tls.d/tls.conf:ro" in nginx["volumes"]
    assert "./certs:/etc/nginx/certs:ro" in nginx["volumes"]
    tls_text = h.NGINX_TLS_CONF.read_text(encoding="utf-8")
    for path in re.findall(r"^\s*ssl_certificate(?:_key)?\s+(\S+);", tls_text, re.M):
        assert path.startswith("/etc/nginx/certs/"), path
    listen = h.nginx_listen_ports(text) | h.nginx_listen_ports(tls_text)
    published = {int(p.rsplit(":", 1)[1]) for p in nginx["ports"]}
    assert {8080, 8443, 8081} <= listen
    assert listen <= published, f"nginx listens on {listen}, compose publishes {published}"
    for url in h.healthcheck_urls(nginx):
        assert int(re.match(r"http://[^:/]+:(\d+)", url).group(1)) in listen


def test_nginx_config_syntax(tmp_path):
    """`nginx -t` on the very file compose mounts. Nginx resolves upstream names when it loads
    its config, so api1/api2 resolve through a private /etc/hosts in a mount namespace (as
    compose's DNS would answer); nothing else about the file is changed."""
    text = _nginx_text()
    nginx = h.which("nginx")
    if nginx is None:
        pytest.skip("nginx binary not installed (apt-get install nginx)")
    hosts = tmp_path / "hosts"
    names = " ".join(sorted({host for host, _ in h.nginx_upstream_servers(text)}))
    hosts.write_text(f"127.0.0.1 localhost {names}\n::1 localhost\n", encoding="utf-8")
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    command = f"mount --bind {hosts} /etc/hosts && exec {nginx} -t -q -p {prefix}/ -e /dev/stderr -c {h.NGINX_CONF}"
    unshare = h.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) missing: cannot resolve compose service names for nginx -t")
    probe = subprocess.run([unshare, "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here ({probe.stderr.decode().strip()}): cannot resolve api1/api2")
    result = subprocess.run([unshare, "-m", "sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- Healthcheck URLs exist in the app -----------------------------------------------------------


def _paths_probed() -> dict[str, str]:
    """Every URL path something outside the app probes: compose, Dockerfile, Prometheus, Terraform."""
    paths = {}
    for name, service in h.services().items():
        if name in h.API_SERVICES or name == "trainer":
            for url in h.healthcheck_urls(service):
                paths[re.sub(r"^http://[^/]+", "", url)] = f"compose {name} healthcheck"
    docker = h.DOCKERFILE.read_text(encoding="utf-8")
    for url in re.findall(r"HEALTHCHECK.*?(http://[^\s\"]+)", docker, re.S):
        paths[re.sub(r"^http://[^/]+", "", url)] = "Dockerfile HEALTHCHECK"
    prom = yaml.safe_load((h.REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    paths[prom["scrape_configs"][0]["metrics_path"]] = "prometheus metrics_path"
    tf = (h.TERRAFORM_DIR / "compute.tf").read_text(encoding="utf-8")
    for path in re.findall(r'path\s*=\s*"(/[^"]*)"', tf):
        paths[path] = "terraform ALB target group health check"
    return paths


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    try:
        from service import create_app
    except ImportError as exc:
        pytest.skip(f"service.create_app not available yet: {exc}")
    from config import load_config

    cfg = load_config(None, [f"service.model={tiny_model_dir}", "service.cache.enabled=false",
                             "service.warmup=false"])
    return create_app(cfg)


def test_probed_paths_exist_in_the_app(app):
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    for path, where in _paths_probed().items():
        assert path in rules, f"{where} probes {path}, which the app does not serve"


def test_terraform_routes_exist_in_the_app(app):
    """API Gateway routes (deploy/terraform/aws/main.tf) match the app's URL map and methods."""
    tf = (h.TERRAFORM_DIR / "main.tf").read_text(encoding="utf-8")
    routes = re.findall(r'^\s*"(GET|POST) (/[^"]*)"\s*=', tf, re.M)
    assert routes
    adapter = app.url_map.bind("localhost")
    for method, path in routes:
        concrete = path.replace("{proxy+}", "index.html")
        endpoint, _ = adapter.match(concrete, method=method)  # raises NotFound / MethodNotAllowed
        assert endpoint


# --- Grafana --------------------------------------------------------------------------------------


def _exposed_metric_names() -> set[str]:
    from service import metrics

    names = set()
    for attr in metrics.__all__:
        metric = getattr(metrics, attr)
        kind, base = getattr(metric, "_type", None), getattr(metric, "_name", None)
        if kind == "counter":
            names |= {f"{base}_total"}
        elif kind == "histogram":
            names |= {f"{base}_bucket", f"{base}_count", f"{base}_sum"}
        elif kind == "gauge":
            names |= {base}
    return names


def test_grafana_dashboard_queries_metrics_the_service_exports():
    dash = json.loads((h.REPO / "deploy/grafana/dashboards/headline-studio.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bheadline_[a-z_]+", e)}
    expected = {
        "headline_requests_total", "headline_request_latency_seconds_bucket", "headline_cache_events_total",
        "headline_generated_tokens_total", "headline_batch_size_bucket", "headline_queue_wait_seconds_bucket",
    }
    assert used == expected
    try:
        exported = _exposed_metric_names()
    except ImportError:
        pytest.skip("service.metrics not written yet")
    assert used <= exported, f"dashboard queries metrics the service does not export: {used - exported}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("request rate", "p50", "p99", "cache hit ratio", "tokens per second", "errors"):
        assert topic in titles


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    ds = yaml.safe_load((h.REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    dash = json.loads((h.REPO / "deploy/grafana/dashboards/headline-studio.json").read_text(encoding="utf-8"))
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {uid}
    provider = yaml.safe_load((h.REPO / "deploy/grafana/provisioning/dashboards/headline.yml").read_text())
    grafana = h.services()["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(
        provider["providers"][0]["options"]["path"]
    )
