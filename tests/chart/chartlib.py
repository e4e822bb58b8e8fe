"""Renders the bosh-nats-sync chart offline (Helm's Go SDK through helm-python-sdk) and
picks apart what the tests and the sidecar fixture need."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import subprocess
from typing import Any

import helm_python as helm
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "bosh-nats-sync"
# The Grafana dashboard: the chart's file, which metrics/grafana-dashboard.json links to.
DASHBOARD = CHART / "dashboards" / "bosh-nats-sync.json"
FIXTURE_DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "sidecar"
# The cluster mode's rendered files, which tests/cluster.rs starts three servers from.
CLUSTER_FIXTURE_DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "cluster"
CLUSTER_TLS_FIXTURE_DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "cluster-tls"
# The same in callout mode (tests/cluster.rs again).
CALLOUT_CLUSTER_FIXTURE_DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "callout-cluster"
RELEASE = "bns"
NAMESPACE = "bosh"

# Distinctive secrets: a rendered ConfigMap holding either would be a leak.
PASSWORD = "pw-Chart-Sekr1t-9d41c"
CLIENT_SECRET = "cs-Chart-Sekr1t-77ab0"

# A real-looking CA so the ConfigMap carries PEM the way an operator would supply it.
EXAMPLE_CA = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBfzCCASWgAwIBAgIUExampleExampleExampleExampleEwCgYIKoZIzj0EAwIw\n"
    "-----END CERTIFICATE-----\n"
)

# Values variants. "default" is values.yaml as shipped.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "basic-auth": {
        "director": {"url": "https://director.bosh.example:25555", "user": "nats-sync",
                     "password": PASSWORD, "caCert": EXAMPLE_CA},
    },
    "uaa": {
        "director": {"url": "https://10.0.0.6:25555", "clientId": "nats-sync-client",
                     "clientSecret": CLIENT_SECRET, "caCert": EXAMPLE_CA,
                     "uaaCaCert": EXAMPLE_CA},
    },
    "metrics-disabled": {
        "director": {"user": "nats-sync", "password": PASSWORD},
        "metrics": {"enabled": False},
    },
    "servicemonitor": {
        "director": {"clientId": "c", "clientSecret": CLIENT_SECRET},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/16"]},
    },
    "grafana-dashboard": {
        "director": {"user": "nats-sync", "password": PASSWORD},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                             "labels": {"team": "bosh"},
                             "annotations": {"grafana_folder": "BOSH"}},
    },
    "external-secret": {
        "director": {"user": "nats-sync", "existingSecret": "director-creds",
                     "passwordKey": "director-password",
                     # Ignored with an existing Secret: it must appear nowhere.
                     "password": PASSWORD},
    },
    "custom-paths": {
        "director": {"user": "nats-sync", "password": PASSWORD},
        "state": {"mountPath": "/srv/bosh/nats-state",
                  "volume": {"persistentVolumeClaim": {"claimName": "nats-state"}}},
        "sync": {"httpPort": 9100, "log": {"format": "text", "level": "debug"},
                 "damping": {"enabled": False}, "watchInterval": 0, "resyncInterval": 600},
        "nats": {"port": 4333, "monitoringPort": 8333, "extraConfig": "ping_interval: 5\nping_max: 2"},
    },
    # High availability: the StatefulSet, as tests/cluster.rs runs it.
    # Only the lame-duck grace period is shortened (nats-server's minimum duration, 30 s, is
    # kept), so the lame-duck test hands agents over in seconds.
    "cluster": {
        "director": {"url": "https://director.bosh.example:25555", "user": "nats-sync",
                     "password": PASSWORD, "caCert": EXAMPLE_CA},
        "cluster": {"enabled": True, "lameDuck": {"gracePeriod": 1, "duration": 30}},
    },
    # Mutual TLS on the routes and no route password (tests/cluster.rs runs it too).
    "cluster-tls": {
        "director": {"url": "https://director.bosh.example:25555", "user": "nats-sync",
                     "password": PASSWORD, "caCert": EXAMPLE_CA},
        "cluster": {"enabled": True, "tls": {"secretName": "nats-routes-tls", "timeout": 3},
                    "networkPolicy": {"enabled": False}},
    },
    "cluster-custom": {
        "director": {"clientId": "nats-sync-client", "clientSecret": CLIENT_SECRET},
        "cluster": {"enabled": True, "replicas": 5, "port": 7222, "name": "bosh-nats",
                    "podAntiAffinity": "required", "topologyKey": "topology.kubernetes.io/zone",
                    "authorization": {"existingSecret": "my-routes", "userKey": "u", "passwordKey": "p"},
                    "tls": {"secretName": "my-routes-tls"},
                    "lameDuck": {"gracePeriod": 20, "duration": 120},
                    "networkPolicy": {"extraIngress": [{"ports": [{"port": 9999}]}]}},
        "terminationGracePeriodSeconds": 150,
        "clusterDomain": "k8s.example.org",
        "nats": {"port": 4333, "monitoringPort": 8333},
        "state": {"mountPath": "/srv/nats", "volume": {"emptyDir": {"medium": "Memory"}}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    },
    # Callout mode: the single pod with the chart's own issuer Secret and certificate Secret
    # name; the cluster as tests/cluster.rs runs it; the user's own Secrets and a server name.
    "callout": {
        "director": {"url": "https://director.bosh.example:25555", "user": "nats-sync",
                     "password": PASSWORD, "caCert": EXAMPLE_CA},
        "admission": "callout",
    },
    "callout-cluster": {
        "director": {"url": "https://director.bosh.example:25555", "user": "nats-sync",
                     "password": PASSWORD, "caCert": EXAMPLE_CA},
        "admission": "callout",
        "cluster": {"enabled": True},
    },
    "callout-custom": {
        "director": {"clientId": "nats-sync-client", "existingSecret": "director-creds"},
        "admission": "callout",
        "callout": {"issuer": {"existingSecret": "nats-issuer", "key": "seed"},
                    "tls": {"secretName": "nats-sync-service-tls"},
                    "serverName": "nats.bosh.example", "userTtl": 600, "timeout": 2},
        "cluster": {"enabled": True, "replicas": 5},
        "nats": {"port": 4333},
    },
}

# The variant the sidecar integration test (tests/sidecar.rs) runs for real.
FIXTURE_VARIANT = "basic-auth"
# The variants the cluster integration test (tests/cluster.rs) runs for real: route
# authorization (the default), route TLS, and callout mode.
CLUSTER_FIXTURE_VARIANT = "cluster"
CLUSTER_TLS_FIXTURE_VARIANT = "cluster-tls"
CALLOUT_CLUSTER_FIXTURE_VARIANT = "callout-cluster"


def is_callout(values: dict[str, Any]) -> bool:
    return values.get("admission") == "callout"


def is_cluster(values: dict[str, Any]) -> bool:
    return bool(values.get("cluster", {}).get("enabled"))


def render(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, after checking the values against the schema."""
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(copy.deepcopy(values))
        return chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE,
                            is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered templates (NOTES.txt excluded)."""
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                objects.append(doc)
    return objects


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objects
             if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"want one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The one object that runs the pods: the single pod's Deployment or the cluster's
    StatefulSet (never both)."""
    found = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, f"want one Deployment or StatefulSet, got {[(o['kind'], o['metadata']['name']) for o in found]}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    found = [c for c in pod_spec.get(key, []) if c["name"] == name]
    assert len(found) == 1, f"want one {key} entry {name}"
    return found[0]


def fixture_files(values: dict[str, Any]) -> dict[str, str]:
    """What tests/sidecar.rs needs from a rendered release: both configuration files, the
    sidecar's other ConfigMap files, and the pod layout (mounts, init command, probes)."""
    objects = manifests(render(values))
    runner = workload(objects)
    pod = runner["spec"]["template"]["spec"]
    init = container(pod, "auth-placeholder", init=True)
    layout = {
        "note": "Generated by tests/chart/run.sh from the chart; do not edit.",
        "mounts": {
            c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            for c in pod["initContainers"] + pod["containers"]
        },
        "volumes": {v["name"]: sorted(k for k in v if k != "name") for v in pod["volumes"]},
        "init_command": init["command"],
        "init_env": {e["name"]: e["value"] for e in init["env"] if "value" in e},
        # Every init step in order: a shell command with its literal environment, or the
        # sidecar's image with its arguments (callout mode's steps follow the placeholder's).
        "init_containers": [
            {"name": c["name"],
             **({"command": c["command"]} if "command" in c else {"args": c["args"]}),
             "env": {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}}
            for c in pod["initContainers"]
        ],
        "nats_command": container(pod, "nats")["command"],
        "sidecar_args": container(pod, "bosh-nats-sync")["args"],
        "sidecar_env": sorted(e["name"] for e in container(pod, "bosh-nats-sync")["env"]),
        "probes": {
            kind: {"path": container(pod, "bosh-nats-sync")[kind]["httpGet"]["path"],
                   "port": port_number(container(pod, "bosh-nats-sync"),
                                       container(pod, "bosh-nats-sync")[kind]["httpGet"]["port"])}
            for kind in ("livenessProbe", "readinessProbe")
        },
    }
    if runner["kind"] == "StatefulSet":
        # What names the routes: the pods' names and the DNS suffix the headless Service gives
        # them, so a test can tell each route's peer.
        svc = one(objects, "Service", "-headless")
        nats = container(pod, "nats")
        layout["cluster"] = {
            "pods": [f"{runner['metadata']['name']}-{i}" for i in range(runner["spec"]["replicas"])],
            "dns_suffix": f".{svc['metadata']['name']}.{NAMESPACE}.svc.{values.get('clusterDomain', 'cluster.local')}",
            "port": port_number(nats, "cluster"),
        }
        # The environment as Kubernetes gives it: literal values (with $(VAR) references) and
        # Secret keys, in order; the init step's Secret keys; what a leaving pod runs.
        layout["init_secret_env"] = [e for e in init["env"] if "value" not in e]
        layout["nats_env"] = nats.get("env", [])
        layout["nats_pre_stop"] = nats["lifecycle"]["preStop"]["exec"]["command"]
        layout["termination_grace_period_seconds"] = pod["terminationGracePeriodSeconds"]
    # Files by the volume that carries them, so a test can place them where the pod mounts them.
    configmaps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    files = {"layout.json": json.dumps(layout, indent=2, sort_keys=True) + "\n"}
    for volume in pod["volumes"]:
        if "configMap" in volume:
            for key, text in sorted(configmaps[volume["configMap"]["name"]].items()):
                files[f"{volume['name']}/{key}"] = text
    return files


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A probe's port, resolving a named port against the container's ports."""
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert len(found) == 1, f"container {c['name']} has no port named {port!r}"
    return found[0]


def binary() -> str | None:
    """The bosh-nats-sync binary to check rendered configs with, when it is built."""
    path = os.environ.get("BOSH_NATS_SYNC_BIN") or str(ROOT / "target" / "debug" / "bosh-nats-sync")
    return path if os.access(path, os.X_OK) else None


def openssl(*args: str, cwd: pathlib.Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"openssl {' '.join(args)}: {out.stderr}"


class Certs:
    """The NATS CA of bosh-deployment (nats_ca) and the certificates it signs. (BOSH's
    generator writes C=USA, which the openssl command refuses — a country has two letters — so
    these subjects are O=Cloud Foundry, CN=…; the job passes subjects through as they are.)"""

    def __init__(self, directory: pathlib.Path):
        self.dir = directory
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/O=Cloud Foundry/CN=default.nats-ca.bosh-internal", cwd=directory)
        self.ca = (directory / "ca.pem").read_text()

    def issue(self, cn: str) -> tuple[str, str]:
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{cn}.key", "-out", f"{cn}.csr",
                "-subj", f"/O=Cloud Foundry/CN={cn}", cwd=self.dir)
        openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{cn}.pem", cwd=self.dir)
        return (self.dir / f"{cn}.pem").read_text(), (self.dir / f"{cn}.key").read_text()
