"""The cluster mode (cluster.enabled): a StatefulSet of nats-server pods behind a headless
Service, joined by routes to every peer's stable DNS name, each pod with its own auth file and
its own sidecar; a PodDisruptionBudget and anti-affinity keep most of them up. The pod layout
itself (auth file, pid file, probes, security) is checked for these variants by test_chart.py
like for the single pod; this file checks what wires the pods into one cluster."""

from __future__ import annotations

import re

import helm_python as helm
import pytest
import yaml

import chartlib
from chartlib import VARIANTS, container, is_cluster, manifests, one, render, workload

CLUSTER_VARIANTS = sorted(n for n, v in VARIANTS.items() if is_cluster(v))


@pytest.fixture(scope="module", params=CLUSTER_VARIANTS)
def cluster(request):
    values = VARIANTS[request.param]
    return request.param, values, manifests(render(values))


def settings(values):
    """The cluster values with the chart's defaults filled in."""
    c = values.get("cluster", {})
    return {
        "replicas": c.get("replicas", 3),
        "port": c.get("port", 6222),
        "name": c.get("name") or f"{chartlib.RELEASE}-bosh-nats-sync",
        "podAntiAffinity": c.get("podAntiAffinity", "preferred"),
        "topologyKey": c.get("topologyKey", "kubernetes.io/hostname"),
        "clusterDomain": values.get("clusterDomain", "cluster.local"),
    }


def selects(match_labels, labels):
    """Whether a matchLabels selector selects an object with these labels."""
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def pod_labels(objects):
    return workload(objects)["spec"]["template"]["metadata"]["labels"]


def cluster_block(objects):
    """The body of nats.conf's `cluster { … }` block; there must be exactly one."""
    conf = one(objects, "ConfigMap", "-nats")["data"]["nats.conf"]
    blocks = re.findall(r"^cluster \{\n(.*?)^\}$", conf, re.M | re.S)
    assert len(blocks) == 1, f"want one cluster block in nats.conf, got {len(blocks)}:\n{conf}"
    return blocks[0]


def test_the_statefulset(cluster):
    name, values, objects = cluster
    want = settings(values)
    sts = one(objects, "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == want["replicas"], name
    assert spec["podManagementPolicy"] == "Parallel", name
    assert spec["serviceName"] == one(objects, "Service", "-headless")["metadata"]["name"]
    assert selects(spec["selector"]["matchLabels"], pod_labels(objects)), spec["selector"]
    # Per pod state: an emptyDir in the pod template, no claim shared or templated.
    assert "volumeClaimTemplates" not in spec
    (state,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "state"]
    assert set(state) == {"name", "emptyDir"}, state


def nats_env(objects):
    """The nats container's environment: name -> entry."""
    nats = container(workload(objects)["spec"]["template"]["spec"], "nats")
    env = nats.get("env", [])
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), names
    return {e["name"]: e for e in env}


def expand(objects, name, secrets):
    """The value Kubernetes gives the nats container's variable `name`: a Secret's key from
    `secrets` ({secret name: {key: value}}), or a literal with $(VAR) references to variables
    defined before it expanded."""
    env = nats_env(objects)
    order = list(env)
    entry = env[name]
    if "valueFrom" in entry:
        ref = entry["valueFrom"]["secretKeyRef"]
        assert not ref.get("optional"), f"{name}: an optional Secret key would start routes without it"
        return secrets[ref["name"]][ref["key"]]

    def sub(m):
        ref = m.group(1)
        assert ref in env and order.index(ref) < order.index(name), f"{name}: $({ref}) is not defined before it"
        return expand(objects, ref, secrets)

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, entry["value"])


def route_refs(block):
    """The `$NAME` entries of the cluster block's routes list."""
    routes_text = re.findall(r"^  routes: \[\n(.*?)^  \]$", block, re.M | re.S)
    assert len(routes_text) == 1, block
    refs = re.findall(r"^\s*\$([A-Z0-9_]+)\s*$", routes_text[0], re.M)
    assert len(refs) == len(routes_text[0].strip().splitlines()), routes_text[0]
    return refs


def test_the_routes_name_every_peer(cluster):
    name, values, objects = cluster
    want = settings(values)
    sts = one(objects, "StatefulSet")["metadata"]["name"]
    headless = one(objects, "Service", "-headless")["metadata"]["name"]
    block = cluster_block(objects)
    secrets = {n: {"user": "U", "password": "P", "u": "U", "p": "P"}
               for n in (f"{chartlib.RELEASE}-bosh-nats-sync-routes", "my-routes")}
    # The routes list names environment variables; each holds a quoted URL.
    routes = []
    for ref in route_refs(block):
        value = expand(objects, ref, secrets)
        assert value.startswith('"') and value.endswith('"'), value
        routes.append(value[1:-1].replace("U:P@", ""))
    expected = [f"nats://{sts}-{i}.{headless}.{chartlib.NAMESPACE}.svc.{want['clusterDomain']}:{want['port']}"
                for i in range(want["replicas"])]
    assert routes == expected, (routes, expected)
    assert re.search(rf'^  name: "{re.escape(want["name"])}"$', block, re.M), block
    assert re.search(rf'^  listen: "0\.0\.0\.0:{want["port"]}"$', block, re.M), block
    assert re.search(r"^  no_advertise: true$", block, re.M), block
    # The port the routes dial is the one the nats container exposes and the Service targets.
    nats = container(workload(objects)["spec"]["template"]["spec"], "nats")
    assert chartlib.port_number(nats, "cluster") == want["port"]


def test_the_headless_service_resolves_every_pod(cluster):
    _, values, objects = cluster
    svc = one(objects, "Service", "-headless")["spec"]
    assert svc["clusterIP"] == "None"
    # Names resolve before the pods are ready (a sidecar is ready only after its server loaded
    # users; the servers must route to each other first).
    assert svc["publishNotReadyAddresses"] is True
    assert selects(svc["selector"], pod_labels(objects)), svc["selector"]
    (port,) = svc["ports"]
    assert port["port"] == settings(values)["port"] and port["targetPort"] == "cluster", port


def test_the_client_service_fronts_every_pod(cluster):
    _, values, objects = cluster
    client = one(objects, "Service", "bosh-nats-sync")["spec"]
    assert "clusterIP" not in client, client
    assert selects(client["selector"], pod_labels(objects)), client["selector"]
    assert [p["targetPort"] for p in client["ports"]] == ["nats"], client["ports"]


def test_the_disruption_budget_keeps_a_quorum(cluster):
    _, values, objects = cluster
    replicas = settings(values)["replicas"]
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == replicas // 2 + 1 and "maxUnavailable" not in pdb, pdb
    assert selects(pdb["selector"]["matchLabels"], pod_labels(objects)), pdb
    assert pdb["selector"] == one(objects, "StatefulSet")["spec"]["selector"], pdb


def test_every_pod_has_its_own_sidecar_and_reload(cluster):
    _, values, objects = cluster
    spec = workload(objects)["spec"]["template"]["spec"]
    assert spec["shareProcessNamespace"] is True
    assert [c["name"] for c in spec["containers"]] == ["nats", "bosh-nats-sync"]
    inits = [c["name"] for c in spec["initContainers"]]
    assert inits == (["auth-placeholder", "issuer-seed", "callout-init"]
                     if chartlib.is_callout(values) else ["auth-placeholder"]), inits
    sync = container(spec, "bosh-nats-sync")
    assert sync["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sync["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = yaml.safe_load(one(objects, "ConfigMap", "-sidecar")["data"]["config.yml"])
    # Its own server: the monitoring endpoint on the pod's loopback, the pid file on its volume.
    assert config["nats"]["monitoring_url"].startswith("http://127.0.0.1:"), config["nats"]


def test_the_pods_are_spread_over_nodes(cluster):
    _, values, objects = cluster
    want = settings(values)
    anti = workload(objects)["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    if want["podAntiAffinity"] == "required":
        assert list(anti) == ["requiredDuringSchedulingIgnoredDuringExecution"], anti
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    else:
        assert list(anti) == ["preferredDuringSchedulingIgnoredDuringExecution"], anti
        (weighted,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        assert weighted["weight"] == 100
        term = weighted["podAffinityTerm"]
    assert term["topologyKey"] == want["topologyKey"]
    assert selects(term["labelSelector"]["matchLabels"], pod_labels(objects)), term


def test_an_explicit_affinity_replaces_the_spreading():
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["nats"]}]}]}}}
    objects = manifests(render({"cluster": {"enabled": True}, "affinity": mine}))
    assert workload(objects)["spec"]["template"]["spec"]["affinity"] == mine


def test_a_volume_shared_by_every_pod_is_refused():
    with pytest.raises(helm.HelmError, match="each pod needs its own auth file and pid file"):
        render({"cluster": {"enabled": True},
                "state": {"mountPath": "/var/run/nats",
                          "volume": {"persistentVolumeClaim": {"claimName": "nats-state"}}}})
    # The single pod may keep its state on a claim.
    render({"state": {"mountPath": "/var/run/nats",
                      "volume": {"persistentVolumeClaim": {"claimName": "nats-state"}}}})


def test_the_schema_rejects_bad_cluster_values():
    bad = [
        {"cluster": {"enabled": "yes"}},
        {"cluster": {"enabled": True, "replicas": 1}},
        {"cluster": {"enabled": True, "replicas": "3"}},
        {"cluster": {"enabled": True, "port": 0}},
        {"cluster": {"enabled": True, "podAntiAffinity": "sometimes"}},
        {"cluster": {"enabled": True, "name": "has space"}},
        {"cluster": {"enabled": True, "size": 3}},
        {"clusterDomain": "Not_A.Domain"},
        {"clusterDomain": ""},
        {"cluster": {"enabled": True, "lameDuck": {"gracePeriod": 10, "duration": 29}}},
        {"cluster": {"enabled": True, "lameDuck": {"gracePeriod": -1, "duration": 30}}},
        {"cluster": {"enabled": True, "lameDuck": {"gracePeriod": "10s", "duration": 30}}},
        {"cluster": {"enabled": True, "authorization": {"existingSecret": "Not A Name"}}},
        {"cluster": {"enabled": True, "authorization": {"enabled": False}}},
        {"cluster": {"enabled": True, "tls": {"secretName": "x", "verify": False}}},
        {"cluster": {"enabled": True, "networkPolicy": {"enabled": "no"}}},
        {"cluster": {"enabled": True, "insecure": True}},
    ]
    with helm.Chart.load(str(chartlib.CHART)) as chart:
        for values in bad:
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(values)


def test_the_single_pod_has_no_cluster():
    objects = manifests(render({}))
    kinds = {o["kind"] for o in objects}
    assert "Deployment" in kinds and not kinds & {"StatefulSet", "PodDisruptionBudget"}, kinds
    assert not [o for o in objects if o["metadata"]["name"].endswith("-headless")]
    conf = one(objects, "ConfigMap", "-nats")["data"]["nats.conf"]
    assert "cluster" not in conf, conf
    nats = container(workload(objects)["spec"]["template"]["spec"], "nats")
    assert [p["name"] for p in nats["ports"]] == ["nats"]
    assert "affinity" not in workload(objects)["spec"]["template"]["spec"]


def test_notes_for_the_cluster():
    notes = render(VARIANTS["cluster"])["bosh-nats-sync/templates/NOTES.txt"]
    for needle in ("rollout status statefulset/bns-bosh-nats-sync", "/routez",
                   "bns-bosh-nats-sync-0", "bns-bosh-nats-sync-2", "PodDisruptionBudget",
                   "minAvailable 2", "Secret bns-bosh-nats-sync-routes", "NetworkPolicy",
                   "/status", " diff"):
        assert needle in notes, needle
    assert "deployment/" not in notes


@pytest.mark.parametrize("variant,directory", [
    (chartlib.CLUSTER_FIXTURE_VARIANT, chartlib.CLUSTER_FIXTURE_DIR),
    (chartlib.CLUSTER_TLS_FIXTURE_VARIANT, chartlib.CLUSTER_TLS_FIXTURE_DIR),
])
def test_the_cluster_fixtures_are_up_to_date(variant, directory):
    """tests/cluster.rs starts clusters from the rendered files; they must match the chart."""
    want = chartlib.fixture_files(VARIANTS[variant])
    have = {str(p.relative_to(directory)): p.read_text()
            for p in directory.rglob("*") if p.is_file()}
    assert have == want, "stale fixture: run tests/chart/run.sh --update-fixture"
