"""The Helm chart: lint, schema, Kubernetes schemas, and the invariants that make the pod
work — both containers agree on the auth file and pid file, probes reach the sidecar's
endpoints, secrets stay out of ConfigMaps."""

from __future__ import annotations

import base64
import copy
import json
import os
import pathlib
import posixpath
import re
import shutil
import subprocess
import tempfile

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

import chartlib
from chartlib import (VARIANTS, container, is_callout, is_cluster, manifests, one, render,
                      workload)

KUBE_VERSION = "1.30.0"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    name = request.param
    values = VARIANTS[name]
    rendered = render(values)
    return name, values, rendered, manifests(rendered)


def pod_spec(objects):
    return workload(objects)["spec"]["template"]["spec"]


def sidecar_config(objects):
    return yaml.safe_load(one(objects, "ConfigMap", "-sidecar")["data"]["config.yml"])


def nats_conf(objects):
    return one(objects, "ConfigMap", "-nats")["data"]["nats.conf"]


def conf_value(conf: str, key: str) -> str:
    """A top-level or tls-block `key: "value"` from nats.conf (the chart quotes every path).
    The cluster block, whose `listen` is the route port, is test_cluster.py's."""
    conf = re.sub(r"^cluster \{\n.*?^\}$", "", conf, flags=re.M | re.S)
    found = re.findall(rf'^\s*{re.escape(key)}:\s*"([^"]*)"\s*$', conf, re.M)
    assert len(found) == 1, f"want one {key} in nats.conf, got {found}\n{conf}"
    return found[0]


def mount_of(c, volume):
    found = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume]
    assert len(found) == 1, f"{c['name']} mounts {volume} {len(found)} times"
    return found[0]


def test_lint_is_clean_for_every_variant():
    for name, values in VARIANTS.items():
        report = helm.lint(str(chartlib.CHART), values, strict=True, kube_version="v" + KUBE_VERSION)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"{name}: {problems}"


def test_every_manifest_is_valid_kubernetes(variant):
    name, _, _, objects = variant
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["kind"] == "ServiceMonitor":
            check_service_monitor_shape(obj)
            continue
        # strict: unknown fields are errors too (a typo in a template would pass silently).
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    runner = "StatefulSet" if is_cluster(VARIANTS[name]) else "Deployment"
    assert {runner, "ConfigMap", "Service"} <= kinds, f"{name}: {kinds}"
    if is_cluster(VARIANTS[name]):
        assert "Deployment" not in kinds and "PodDisruptionBudget" in kinds, f"{name}: {kinds}"
    else:
        assert not kinds & {"StatefulSet", "PodDisruptionBudget"}, f"{name}: {kinds}"


def check_service_monitor_shape(obj):
    """ServiceMonitor is a CRD (prometheus-operator): no schema ships with kubernetes-validate."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    spec = obj["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, spec
    assert spec["selector"]["matchLabels"], spec
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, ep
        assert ep["path"] == "/metrics"
        assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", ep["interval"]), ep


def test_the_schema_rejects_bad_values():
    bad = [
        {"sync": {"httpPort": 0}},
        {"sync": {"httpPort": "9758"}},
        {"sync": {"log": {"format": "xml"}}},
        {"sync": {"pollInterval": 0}},
        {"sync": {"watchInterval": -1}},
        {"sync": {"watchInterval": 0.01}},
        {"sync": {"watchInterval": "1"}},
        {"sync": {"resyncInterval": 0}},
        {"director": {"url": "10.0.0.6:25555"}},
        {"director": {"maxConcurrency": 0}},
        {"director": {"caCert": "not a certificate"}},
        {"subjects": {"director": "CN=x\nCN=y"}},
        {"nats": {"port": 70000}},
        {"metrics": {"serviceMonitor": {"interval": "often"}}},
        {"containerSecurityContext": {"privileged": True}},
        {"state": {"mountPath": "relative/dir"}},
        {"unknownTopLevelKey": 1},
        {"director": {"pasword": "typo"}},
        {"grafanaDashboard": {"enabled": "yes"}},
        {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
        {"grafanaDashboard": {"namespace": "Not_A_Namespace"}},
        {"grafanaDashboard": {"folder": "BOSH"}},
    ]
    with helm.Chart.load(str(chartlib.CHART)) as chart:
        for values in bad:
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(values)
            with pytest.raises(helm.HelmError):
                # Rendering validates too: `helm install` would refuse the same values.
                chart.render(values, name="x", namespace="y")


def test_the_watch_settings_reach_the_sidecar_config(variant):
    _, values, _, objects = variant
    intervals = sidecar_config(objects)["intervals"]
    sync = values.get("sync", {})
    assert intervals["watch"] == sync.get("watchInterval", 1), intervals
    assert intervals["resync"] == sync.get("resyncInterval", 300), intervals


def test_a_resync_shorter_than_the_watch_is_refused():
    with pytest.raises(helm.HelmError) as refused:
        render({"sync": {"watchInterval": 5, "resyncInterval": 2}})
    assert "sync.resyncInterval (2) must not be shorter than sync.watchInterval (5)" in str(refused.value)
    # With the watch off, resync is unused and not compared.
    config = sidecar_config(manifests(render({"sync": {"watchInterval": 0, "resyncInterval": 0.5}})))
    assert config["intervals"]["watch"] == 0 and config["intervals"]["resync"] == 0.5


def test_the_pod_layout_is_consistent(variant):
    name, values, _, objects = variant
    spec = pod_spec(objects)
    assert spec["shareProcessNamespace"] is True
    sync = container(spec, "bosh-nats-sync")
    nats = container(spec, "nats")
    init = container(spec, "auth-placeholder", init=True)
    config = sidecar_config(objects)
    conf = nats_conf(objects)

    # The auth file: the sidecar writes the file nats-server includes, on the shared volume.
    conf_dir = posixpath.dirname(nats["command"][nats["command"].index("--config") + 1])
    assert conf_dir == mount_of(nats, "nats-config")
    include = re.findall(r'^include\s+"([^"]+)"\s*$', conf, re.M)
    assert len(include) == 1, conf
    # nats-server joins the include to the config's directory, even an absolute one: only a
    # relative include reaches the volume.
    assert not include[0].startswith("/"), include
    included = posixpath.normpath(posixpath.join(conf_dir, include[0]))
    auth_file = config["nats"]["config_file_path"]
    assert included == auth_file, (included, auth_file)
    state = mount_of(sync, "state")
    assert mount_of(nats, "state") == state == mount_of(init, "state")
    assert posixpath.dirname(auth_file) == state
    # The init container writes the placeholder at that very path.
    assert {e["name"]: e.get("value") for e in init["env"]}["AUTH_FILE"] == auth_file
    assert "{authorization: {token: f0oBar}}" in init["command"][-1]
    if is_callout(values):
        # Then callout mode's init step writes the auth file from the sidecar's configuration.
        callout_init = container(spec, "callout-init", init=True)
        assert callout_init["args"] == sync["args"] + ["init"], callout_init["args"]
        assert mount_of(callout_init, "state") == state

    # The pid file nats-server writes is the one the sidecar reads; SIGHUP, not an executable.
    assert conf_value(conf, "pid_file") == config["nats"]["nats_server_pid_file"]
    assert posixpath.dirname(config["nats"]["nats_server_pid_file"]) == state
    assert "nats_server_executable" not in config["nats"]

    # Reload verification: the sidecar polls the monitoring endpoint nats-server serves locally.
    http = conf_value(conf, "http")
    assert http.startswith("127.0.0.1:"), http
    assert config["nats"]["monitoring_url"] == f"http://{http}"

    # TLS with verify_and_map, certificates from the mounted Secret.
    assert re.search(r"^\s*verify_and_map:\s*true\s*$", conf, re.M), conf
    tls_dir = mount_of(nats, "nats-tls")
    for key, file in [("cert_file", "tls.crt"), ("key_file", "tls.key"), ("ca_file", "ca.crt")]:
        assert conf_value(conf, key) == f"{tls_dir}/{file}"
    listen = conf_value(conf, "listen")
    assert listen == f"0.0.0.0:{port(nats, 'nats')}"

    # Probes: the binary's endpoints, on the port the sidecar listens on.
    listen_host, listen_port = config["http"]["listen"].rsplit(":", 1)
    assert listen_host == "0.0.0.0" and config["http"]["enabled"] is True
    assert int(listen_port) == chartlib.port_number(sync, "http") == values.get("sync", {}).get("httpPort", 9758)
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = sync[probe]["httpGet"]
        assert get["path"] == path
        assert chartlib.port_number(sync, get["port"]) == int(listen_port)

    # The sidecar reads its config from its ConfigMap mount, and the subject files from there.
    cfg_arg = sync["args"][sync["args"].index("-c") + 1]
    conf_mount = mount_of(sync, "sync-config")
    assert cfg_arg == f"{conf_mount}/config.yml"
    cm_keys = set(one(objects, "ConfigMap", "-sidecar")["data"])
    for key in ("director_subject_file", "hm_subject_file", "director_ca_cert", "uaa_ca_cert"):
        if key in config["director"]:
            path = config["director"][key]
            assert posixpath.dirname(path) == conf_mount and posixpath.basename(path) in cm_keys, path


def port(c, name):
    return chartlib.port_number(c, name)


def test_the_security_context_is_restrictive(variant):
    _, _, _, objects = variant
    spec = pod_spec(objects)
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
    assert spec["automountServiceAccountToken"] is False
    uids = set()
    for c in spec["initContainers"] + spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert not sc.get("privileged"), c["name"]
        uids.add(sc.get("runAsUser", pod_sc["runAsUser"]))
        assert c["resources"]["limits"]["memory"], c["name"]
    # Same UID for both containers: that is what lets the sidecar SIGHUP nats-server
    # without CAP_KILL.
    assert len(uids) == 1, uids


def test_secrets_never_reach_a_configmap(variant):
    name, values, rendered, objects = variant
    # The director's secrets, and whatever a rendered Secret holds (the route password).
    made = [base64.b64decode(v).decode() for o in objects if o["kind"] == "Secret"
            for v in o.get("data", {}).values()]
    secrets = (chartlib.PASSWORD, chartlib.CLIENT_SECRET, *[m for m in made if len(m) >= 16])
    for obj in objects:
        if obj["kind"] == "Secret":
            continue
        text = json.dumps(obj)
        for secret in secrets:
            assert secret not in text, f"{name}: secret in {obj['kind']} {obj['metadata']['name']}"
    assert not any(s in rendered.get("bosh-nats-sync/templates/NOTES.txt", "") for s in secrets)
    spec = pod_spec(objects)
    sync = container(spec, "bosh-nats-sync")
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in sync["env"]}
    director = values.get("director", {})
    secret_name = director.get("existingSecret") or f"{chartlib.RELEASE}-bosh-nats-sync-director"
    assert env["BOSH_NATS_SYNC_DIRECTOR_PASSWORD"]["name"] == secret_name
    assert env["BOSH_NATS_SYNC_DIRECTOR_PASSWORD"]["key"] == director.get("passwordKey", "password")
    assert env["BOSH_NATS_SYNC_DIRECTOR_CLIENT_SECRET"]["name"] == secret_name
    created = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-director")]
    if director.get("existingSecret"):
        assert not [o for o in created if o["metadata"]["name"].endswith("-director")], \
            f"{name}: an existing Secret means the chart creates none"
    else:
        data = one(objects, "Secret", "-director").get("data", {})
        decoded = {k: base64.b64decode(v).decode() for k, v in data.items()}
        if director.get("password"):
            assert decoded[director.get("passwordKey", "password")] == director["password"]
        if director.get("clientSecret"):
            assert decoded[director.get("clientSecretKey", "client-secret")] == director["clientSecret"]


def test_metrics_wiring(variant):
    name, values, _, objects = variant
    annotations = workload(objects)["spec"]["template"]["metadata"]["annotations"]
    metrics = values.get("metrics", {})
    enabled = metrics.get("enabled", True)
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    metric_services = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics")]
    spec = pod_spec(objects)
    http_port = chartlib.port_number(container(spec, "bosh-nats-sync"), "http")
    if not enabled:
        assert "prometheus.io/scrape" not in annotations
        assert not monitors and not metric_services
        return
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(http_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    svc = metric_services[0]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    if metrics.get("serviceMonitor", {}).get("enabled"):
        (monitor,) = monitors
        labels = svc["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
        assert monitor["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        # The client Service must not be selected too (it has no metrics port).
        client = one(objects, "Service", "bosh-nats-sync")
        assert not all(client["metadata"]["labels"].get(k) == v
                       for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    else:
        assert not monitors


def test_grafana_dashboard(variant):
    """Off by default; on, a ConfigMap for Grafana's dashboard sidecar holding the chart's
    dashboards/bosh-nats-sync.json byte for byte (the file metrics/grafana-dashboard.json
    links to), with the sidecar's label and the configured labels, annotations and namespace."""
    name, values, _, objects = variant
    wanted = values.get("grafanaDashboard", {})
    found = [o for o in objects
             if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-grafana-dashboard")]
    if not wanted.get("enabled", False):
        assert not found, f"{name}: the dashboard ConfigMap is off by default"
        return
    (cm,) = found
    meta = cm["metadata"]
    assert meta["namespace"] == (wanted.get("namespace") or chartlib.NAMESPACE)
    assert meta["labels"]["grafana_dashboard"] == "1", meta["labels"]
    for key, value in wanted.get("labels", {}).items():
        assert meta["labels"][key] == value, meta["labels"]
    assert meta.get("annotations", {}) == wanted.get("annotations", {}), meta
    # The chart's own labels stay, so `helm uninstall` and selectors find it.
    assert meta["labels"]["app.kubernetes.io/instance"] == chartlib.RELEASE
    assert list(cm["data"]) == ["bosh-nats-sync.json"], list(cm["data"])
    embedded = cm["data"]["bosh-nats-sync.json"]
    assert embedded == chartlib.DASHBOARD.read_text(), "the ConfigMap must embed the file unchanged"
    dashboard = json.loads(embedded)
    assert dashboard["uid"] == "bosh-nats-sync"
    assert any(v["name"] == "datasource" for v in dashboard["templating"]["list"])
    # A ConfigMap holds at most 1 MiB.
    assert len(embedded.encode()) < 512 * 1024, len(embedded)


def test_the_metrics_dashboard_is_the_charts_file():
    """metrics/grafana-dashboard.json is a link to the chart's file, so there is one
    dashboard (Helm reads only files inside the chart)."""
    link = chartlib.ROOT / "metrics" / "grafana-dashboard.json"
    assert link.is_symlink(), f"{link} must be a symlink to {chartlib.DASHBOARD}"
    assert link.resolve() == chartlib.DASHBOARD.resolve()


def test_a_packaged_chart_carries_the_dashboard():
    """`helm package` keeps dashboards/ (no .helmignore drops it): the archive renders the
    same ConfigMap."""
    values = {"grafanaDashboard": {"enabled": True}}
    with tempfile.TemporaryDirectory() as tmp:
        archive = helm.package(str(chartlib.CHART), destination=tmp)
        with helm.Chart.load_archive(pathlib.Path(archive).read_bytes()) as chart:
            rendered = chart.render(values, name=chartlib.RELEASE, namespace=chartlib.NAMESPACE,
                                    is_install=True)
    cm = one(manifests(rendered), "ConfigMap", "-grafana-dashboard")
    assert cm["data"]["bosh-nats-sync.json"] == chartlib.DASHBOARD.read_text()


def test_a_chart_without_the_dashboard_file_refuses_to_render_it():
    """An empty ConfigMap would import nothing, silently: rendering fails instead."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "bosh-nats-sync"
        shutil.copytree(chartlib.CHART, copy)
        shutil.rmtree(copy / "dashboards")
        with helm.Chart.load(str(copy)) as chart:
            chart.render({}, name="x", namespace="y")  # off: no file needed
            with pytest.raises(helm.HelmError, match="dashboards/bosh-nats-sync.json"):
                chart.render({"grafanaDashboard": {"enabled": True}}, name="x", namespace="y")


def test_the_dashboard_label_can_be_replaced():
    objects = manifests(render({"grafanaDashboard": {
        "enabled": True, "labels": {"grafana_dashboard": None, "dashboards": "bosh"}}}))
    labels = one(objects, "ConfigMap", "-grafana-dashboard")["metadata"]["labels"]
    assert "grafana_dashboard" not in labels and labels["dashboards"] == "bosh", labels


def test_notes_tell_how_to_check():
    rendered = render(VARIANTS["basic-auth"])
    notes = rendered["bosh-nats-sync/templates/NOTES.txt"]
    for needle in ("rollout status", "/status", "/metrics", "logs", " diff"):
        assert needle in notes, needle
    assert "WARNING" not in notes
    assert "WARNING" in render({})["bosh-nats-sync/templates/NOTES.txt"]


@pytest.mark.skipif(chartlib.binary() is None, reason="bosh-nats-sync is not built (cargo build, or set BOSH_NATS_SYNC_BIN)")
@pytest.mark.parametrize("name", [n for n in sorted(VARIANTS)
                                  if n != "default" and not is_callout(VARIANTS[n])])
def test_the_binary_accepts_the_rendered_config(name):
    """`bosh-nats-sync check-config` on each rendered sidecar config: every key is known. (The
    callout variants name files of their Secrets: test_the_callout_init_steps_run_as_rendered.)"""
    objects = manifests(render(VARIANTS[name]))
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "config.yml"
        path.write_text(one(objects, "ConfigMap", "-sidecar")["data"]["config.yml"])
        env = dict(os.environ, BOSH_NATS_SYNC_DIRECTOR_PASSWORD=chartlib.PASSWORD,
                   BOSH_NATS_SYNC_DIRECTOR_CLIENT_SECRET=chartlib.CLIENT_SECRET)
        out = subprocess.run([chartlib.binary(), "-c", str(path), "check-config"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "unknown key" not in out.stdout + out.stderr, out.stdout
        assert "reload via SIGHUP" in out.stdout, out.stdout
        watch = VARIANTS[name].get("sync", {}).get("watchInterval", 1)
        want = "watch off" if watch == 0 else f"watch every {watch}s"
        assert want in out.stdout, out.stdout
        # A pod of a cluster turns ready with the agents, not the bootstrap users.
        assert ("ready after the first full pass" in out.stdout) == is_cluster(VARIANTS[name]), out.stdout


def test_the_sidecar_fixture_is_up_to_date():
    """tests/sidecar.rs runs the rendered files for real; they must match the chart."""
    want = chartlib.fixture_files(VARIANTS[chartlib.FIXTURE_VARIANT])
    have = {str(p.relative_to(chartlib.FIXTURE_DIR)): p.read_text()
            for p in chartlib.FIXTURE_DIR.rglob("*") if p.is_file()}
    assert have == want, "stale fixture: run tests/chart/run.sh --update-fixture"


# ---------------------------------------------------------------------------------------
# Callout mode (admission: callout).

def test_callout_mode_wiring(variant):
    name, values, _, objects = variant
    spec = pod_spec(objects)
    config = sidecar_config(objects)
    inits = [c["name"] for c in spec["initContainers"]]
    volumes = {v["name"]: v for v in spec["volumes"]}
    issuer_secrets = [o for o in objects if o["kind"] == "Secret"
                      and o["metadata"]["name"].endswith("-callout-issuer")]
    callout_volumes = {"callout-issuer", "callout-keys", "callout-tls", "nats-ca"}
    if not is_callout(values):
        assert inits == ["auth-placeholder"], inits
        assert "admission" not in config["nats"] and "callout" not in config["nats"]
        assert not issuer_secrets and not callout_volumes & set(volumes)
        assert "hostAliases" not in spec
        # A pod of a cluster is ready once a pass has read the director's agents (§7).
        assert config["http"].get("ready_after_full_pass", False) is is_cluster(values)
        return
    # The placeholder's step first (in a cluster it checks the route credentials; `init`
    # replaces its file), then the seed's copy and `init`.
    assert inits == ["auth-placeholder", "issuer-seed", "callout-init"], inits
    assert "ready_after_full_pass" not in config["http"], "callout mode's readiness is its own"
    callout = values.get("callout", {})
    sync = container(spec, "bosh-nats-sync")
    nats = container(spec, "nats")
    seed = container(spec, "issuer-seed", init=True)
    init = container(spec, "callout-init", init=True)
    settings = config["nats"]["callout"]
    assert config["nats"]["admission"] == "callout"
    assert settings["user_ttl"] == callout.get("userTtl", 3600)
    assert settings["timeout"] == callout.get("timeout", 1)
    # The sidecar reaches its own nats-server: by 127.0.0.1, or by the certificate's name
    # resolved to 127.0.0.1 in the pod.
    port = values.get("nats", {}).get("port", 4222)
    if callout.get("serverName"):
        assert spec["hostAliases"] == [{"ip": "127.0.0.1", "hostnames": [callout["serverName"]]}]
        assert settings["url"] == f"tls://{callout['serverName']}:{port}"
    else:
        assert "hostAliases" not in spec
        assert settings["url"] == f"tls://127.0.0.1:{port}"
    # `init` runs with the sidecar's image, configuration and mounts.
    assert init["image"] == sync["image"] and init["args"] == sync["args"] + ["init"]
    assert init["volumeMounts"] == sync["volumeMounts"]
    # The files the configuration names are where the Secrets are mounted.
    assert settings["cert_file"] == f"{mount_of(sync, 'callout-tls')}/tls.crt"
    assert settings["key_file"] == f"{mount_of(sync, 'callout-tls')}/tls.key"
    assert settings["ca_file"] == f"{mount_of(sync, 'nats-ca')}/ca.crt"
    assert settings["issuer_seed_file"] == f"{mount_of(sync, 'callout-keys')}/issuer.seed"
    tls_secret = callout.get("tls", {}).get("secretName") or f"{chartlib.RELEASE}-bosh-nats-sync-callout-tls"
    assert volumes["callout-tls"]["secret"]["secretName"] == tls_secret
    assert [i["key"] for i in volumes["callout-tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    # Only the server Secret's CA reaches the sidecar, never the server's key.
    assert volumes["nats-ca"]["secret"]["secretName"] == volumes["nats-tls"]["secret"]["secretName"]
    assert volumes["nats-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert "nats-tls" not in {m["name"] for m in sync["volumeMounts"]}
    # The seed: its Secret is mounted into the copying step alone; the owner-only copy lives in
    # memory, read-only for init and the sidecar, and nats-server sees neither.
    mounted = {c["name"]: {m["name"]: m for m in c["volumeMounts"]}
               for c in spec["initContainers"] + spec["containers"]}
    assert [c for c, m in mounted.items() if "callout-issuer" in m] == ["issuer-seed"]
    assert sorted(c for c, m in mounted.items() if "callout-keys" in m) == \
        ["bosh-nats-sync", "callout-init", "issuer-seed"]
    assert mounted["bosh-nats-sync"]["callout-keys"]["readOnly"] is True
    assert mounted["callout-init"]["callout-keys"]["readOnly"] is True
    assert not callout_volumes & set(mounted["nats"]), mounted["nats"]
    assert volumes["callout-keys"]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e["value"] for e in seed["env"]}
    assert env["SEED_FILE"] == settings["issuer_seed_file"]
    assert env["SEED_SOURCE"] == f"{mount_of(seed, 'callout-issuer')}/issuer.seed"
    issuer = callout.get("issuer", {})
    assert volumes["callout-issuer"]["secret"]["items"] == [
        {"key": issuer.get("key", "issuer.seed"), "path": "issuer.seed"}]
    if issuer.get("existingSecret"):
        assert not issuer_secrets, "the user's own Secret: the chart makes none"
        assert volumes["callout-issuer"]["secret"]["secretName"] == issuer["existingSecret"]
        return
    (secret,) = issuer_secrets
    assert volumes["callout-issuer"]["secret"]["secretName"] == secret["metadata"]["name"]
    # Made once and kept: upgrades find it (lookup), helm uninstall leaves it.
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    text = base64.b64decode(secret["data"][issuer.get("key", "issuer.seed")]).decode()
    assert len(base64.b64decode(text, validate=True)) == 32, "32 random bytes in base64"
    # Not in the pod's checksum: a render without a cluster makes a new key each time, which
    # must not restart the pods.
    again = one(manifests(render(values)), "Secret", "-callout-issuer")
    assert again["data"] != secret["data"], "a new key when none exists yet"
    def template(objs):
        t = copy.deepcopy(workload(objs)["spec"]["template"])
        # (The route password, drawn anew on every such render too, has its own checksum.)
        t["metadata"]["annotations"].pop("checksum/routes", None)
        return t
    assert template(manifests(render(values))) == template(objects)


@pytest.mark.skipif(chartlib.binary() is None, reason="bosh-nats-sync is not built (cargo build, or set BOSH_NATS_SYNC_BIN)")
@pytest.mark.parametrize("name", [n for n in sorted(VARIANTS) if is_callout(VARIANTS[n])])
def test_the_callout_init_steps_run_as_rendered(name):
    """The pod's init steps, run as rendered on its mounts laid out under a temporary root:
    the Secret's seed file is group-readable as the kubelet leaves it under fsGroup (0440) and
    bosh-nats-sync refuses it so; the rendered copy makes it owner-only (0600), `init` then
    writes the auth file with the callout block, and the sidecar's configuration passes
    check-config. The seed appears in no output."""
    values = VARIANTS[name]
    objects = manifests(render(values))
    spec = pod_spec(objects)
    config_text = one(objects, "ConfigMap", "-sidecar")["data"]["config.yml"]
    configmap = one(objects, "ConfigMap", "-sidecar")["data"]
    mounts = {m["mountPath"] for c in spec["initContainers"] + spec["containers"]
              for m in c["volumeMounts"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)

        def moved(text: str) -> str:
            for m in sorted(mounts, key=len, reverse=True):
                text = text.replace(f"{m}/", f"{root}{m}/")
            return text

        def at(path: str) -> pathlib.Path:
            return pathlib.Path(moved(path))

        for m in mounts:
            (root / m.lstrip("/")).mkdir(parents=True, exist_ok=True)
        # The Secrets and ConfigMaps where the pod mounts them.
        sync = container(spec, "bosh-nats-sync")
        seed_step = container(spec, "issuer-seed", init=True)
        issuer = base64.b64encode(os.urandom(32)).decode()
        source = root / mount_of(seed_step, "callout-issuer").lstrip("/") / "issuer.seed"
        source.write_text(issuer)
        source.chmod(0o440)
        certs = chartlib.Certs(root)
        cert, key = certs.issue("default.nats-sync.bosh-internal")
        tls = root / mount_of(sync, "callout-tls").lstrip("/")
        (tls / "tls.crt").write_text(cert)
        (tls / "tls.key").write_text(key)
        (root / mount_of(sync, "nats-ca").lstrip("/") / "ca.crt").write_text(certs.ca)
        conf = root / mount_of(sync, "sync-config").lstrip("/")
        for k, v in configmap.items():
            # (The variants' director CA is a stand-in; the director is never asked here.)
            (conf / k).write_text(moved(v) if k == "config.yml"
                                  else certs.ca if k.endswith("-ca.crt") else v)
        config = yaml.safe_load(config_text)
        seed_file = at(config["nats"]["callout"]["issuer_seed_file"])
        exe = chartlib.binary()
        cfg = str(conf / "config.yml")
        creds = dict(os.environ, BOSH_NATS_SYNC_DIRECTOR_PASSWORD=chartlib.PASSWORD,
                     BOSH_NATS_SYNC_DIRECTOR_CLIENT_SECRET=chartlib.CLIENT_SECRET)
        run = lambda argv, env=creds: subprocess.run(argv, capture_output=True, text=True,
                                                    timeout=60, env=env)
        # The Secret's file as it is mounted: refused.
        direct = conf / "direct.yml"
        direct.write_text(moved(config_text).replace(str(seed_file), str(source)))
        out = run([exe, "-c", str(direct), "check-config"])
        assert out.returncode == 2 and "mode 0440" in out.stderr, out.stdout + out.stderr
        # The copying step, as rendered.
        env = {k: moved(v) for k, v in ((e["name"], e["value"]) for e in seed_step["env"])}
        out = run(seed_step["command"], dict(os.environ, **env))
        assert out.returncode == 0, out.stderr
        assert seed_file.read_text() == issuer
        assert seed_file.stat().st_mode & 0o777 == 0o600
        # Run again (a pod whose init steps rerun over the same emptyDir): still the same.
        assert run(seed_step["command"], dict(os.environ, **env)).returncode == 0
        assert seed_file.stat().st_mode & 0o777 == 0o600 and seed_file.read_text() == issuer
        # `init`, as the callout-init step runs it: without the director's secrets, which the
        # step is not given.
        init = container(spec, "callout-init", init=True)
        assert "env" not in init, "no secret reaches the init step"
        args = [moved(a) for a in init["args"]]
        out = run([exe, *args], {k: v for k, v in os.environ.items()
                                 if not k.startswith("BOSH_NATS_SYNC_")})
        assert out.returncode == 0, out.stdout + out.stderr
        auth = json.loads(at(config["nats"]["config_file_path"]).read_text())
        assert auth["authorization"]["auth_callout"]["issuer"].startswith("A")
        assert auth["authorization"]["auth_callout"]["auth_users"][-1] == \
            "O=Cloud Foundry, CN=default.nats-sync.bosh-internal"
        out = run([exe, "-c", cfg, "check-config"])
        assert out.returncode == 0, out.stdout + out.stderr
        assert "callout mode" in out.stdout and "unknown key" not in out.stdout, out.stdout
        assert issuer not in out.stdout + out.stderr


def test_the_placeholder_step_replaces_a_callout_auth_file_only():
    """Back from callout mode on a kept state volume: the file mode's init step replaces the
    auth file holding auth_callout (nats-server cannot drop it on a reload) and keeps any
    other file (the agents of a users file survive a restart)."""
    spec = pod_spec(manifests(render(VARIANTS["custom-paths"])))
    step = container(spec, "auth-placeholder", init=True)
    with tempfile.TemporaryDirectory() as tmp:
        auth = pathlib.Path(tmp) / "auth.json"
        env = dict(os.environ, AUTH_FILE=str(auth))
        run = lambda: subprocess.run(step["command"], env=env, capture_output=True, text=True,
                                     timeout=60)
        assert run().returncode == 0
        assert auth.read_text() == "{authorization: {token: f0oBar}}\n", "absent: the placeholder"
        users = '{"authorization": {"users": [{"user": "CN=x"}]}}\n'
        auth.write_text(users)
        assert run().returncode == 0 and auth.read_text() == users, "a users file stays"
        auth.write_text('{"authorization": {"users": [], "auth_callout": {"issuer": "A"}}}\n')
        assert run().returncode == 0
        assert auth.read_text() == "{authorization: {token: f0oBar}}\n", "the callout block goes"


def test_the_callout_cluster_fixture_is_up_to_date():
    """tests/cluster.rs runs the rendered callout cluster for real."""
    want = chartlib.fixture_files(VARIANTS[chartlib.CALLOUT_CLUSTER_FIXTURE_VARIANT])
    have = {str(p.relative_to(chartlib.CALLOUT_CLUSTER_FIXTURE_DIR)): p.read_text()
            for p in chartlib.CALLOUT_CLUSTER_FIXTURE_DIR.rglob("*") if p.is_file()}
    assert have == want, "stale fixture: run tests/chart/run.sh --update-fixture"
