"""Route security, lame duck, the NetworkPolicy and the PodDisruptionBudget of the cluster mode.

Routes are a trust boundary: a server that completes a route reads every message and publishes
as anyone. So every rendering of the chart whose nats.conf has a `cluster` block must make each
route authenticate (route `authorization` with credentials from a Secret, through the
environment) or present a certificate (`tls` with `verify`); a sweep over the values the schema
allows checks that no combination renders anything else. tests/cluster.rs runs the rendered
files with real nats-servers (a rogue server refused, lame duck handing agents over)."""

from __future__ import annotations

import base64
import itertools
import json
import pathlib
import re
import shutil
import tempfile
from typing import Any

import helm_python as helm
import pytest
import yaml

import chartlib
from chartlib import VARIANTS, container, is_cluster, manifests, one, render, workload

CLUSTER_VARIANTS = sorted(n for n, v in VARIANTS.items() if is_cluster(v))
ROUTE_SECRET = f"{chartlib.RELEASE}-bosh-nats-sync-routes"


def nats_conf(objects):
    return one(objects, "ConfigMap", "-nats")["data"]["nats.conf"]


def cluster_blocks(conf: str) -> list[str]:
    """Every top-level `cluster` block of a nats.conf, in any spelling nats-server accepts
    (keys are case-insensitive; `:`, `=` or nothing before the `{`)."""
    starts = [m.end() for m in re.finditer(r'(?mi)^\s*["\']?cluster["\']?\s*[:=]?\s*\{', conf)]
    blocks = []
    for start in starts:
        depth, i = 1, start
        while depth and i < len(conf):
            depth += {"{": 1, "}": -1}.get(conf[i], 0)
            i += 1
        blocks.append(conf[start:i - 1])
    return blocks


def sub_block(block: str, key: str) -> str | None:
    found = re.findall(rf"(?ms)^\s*{key}\s*\{{\n(.*?)^\s*\}}\s*$", block)
    assert len(found) <= 1, f"{key} appears {len(found)} times:\n{block}"
    return found[0] if found else None


def pod(objects):
    return workload(objects)["spec"]["template"]["spec"]


def env_of(c) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def route_security(objects, values) -> set[str]:
    """What makes every route of this rendering authenticate: {"authorization"}, {"tls"} or
    both. Fails when the cluster block admits any route, or when what it refers to is not
    wired: the credentials' variables must come from a Secret's keys (never a literal), the
    certificate files from the route TLS Secret's volume."""
    conf = nats_conf(objects)
    blocks = cluster_blocks(conf)
    assert len(blocks) == 1, f"want one cluster block, got {len(blocks)}:\n{conf}"
    block = blocks[0]
    spec = pod(objects)
    nats = container(spec, "nats")
    env = env_of(nats)
    found = set()
    auth = sub_block(block, "authorization")
    if auth is not None:
        assert re.search(r"(?m)^\s*user:\s*\$NATS_ROUTE_USER\s*$", auth), auth
        assert re.search(r"(?m)^\s*password:\s*\$NATS_ROUTE_PASSWORD\s*$", auth), auth
        assert not re.search(r"(?m)^\s*(users|token|permissions)\b", auth), auth
        for var, raw in [("NATS_ROUTE_USER", "ROUTE_USER"), ("NATS_ROUTE_PASSWORD", "ROUTE_PASSWORD")]:
            # Quoted, so nats-server parses any value as a string.
            assert env[var]["value"] == f'"$({raw})"', env[var]
            ref = env[raw]["valueFrom"]["secretKeyRef"]
            assert not ref.get("optional"), ref
            wanted = values.get("cluster", {}).get("authorization", {}).get("existingSecret") or ROUTE_SECRET
            assert ref["name"] == wanted, ref
            if ref["name"] == ROUTE_SECRET:
                secret = one(objects, "Secret", "-routes")
                data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
                assert data[ref["key"]], f"{ref}: empty"
        # Every route URL presents the credentials.
        for i in range(workload(objects)["spec"]["replicas"]):
            assert env[f"NATS_ROUTE_{i}"]["value"].startswith('"nats://$(ROUTE_USER):$(ROUTE_PASSWORD)@'), env[f"NATS_ROUTE_{i}"]
        found.add("authorization")
    tls = sub_block(block, "tls")
    if tls is not None:
        assert re.search(r"(?m)^\s*verify:\s*true\s*$", tls), tls
        assert not re.search(r"(?mi)^\s*insecure\b", tls), tls
        # Without a password, a certificate must name one of the routes (an agent's
        # certificate from a shared CA is no route); with one, the check stays off, as
        # nats-server would skip the password when it is on.
        check_known = bool(re.search(r"(?m)^\s*verify_cert_and_check_known_urls:\s*true\s*$", tls))
        assert check_known == (auth is None), tls
        files = dict(re.findall(r'(?m)^\s*(cert_file|key_file|ca_file):\s*"([^"]+)"\s*$', tls))
        assert set(files) == {"cert_file", "key_file", "ca_file"}, tls
        mounts = {m["mountPath"]: m["name"] for m in nats["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for path in files.values():
            volume = volumes[mounts[path.rsplit("/", 1)[0]]]
            assert volume["secret"]["secretName"] == values["cluster"]["tls"]["secretName"], volume
        found.add("tls")
    assert found, f"routes anyone may join:\n{block}"
    return found


# --- the variants ----------------------------------------------------------------------------

@pytest.fixture(scope="module", params=CLUSTER_VARIANTS)
def cluster(request):
    values = VARIANTS[request.param]
    return request.param, values, manifests(render(values))


def test_routes_authenticate_in_every_cluster_variant(cluster):
    name, values, objects = cluster
    c = values["cluster"]
    want = set()
    if c.get("tls", {}).get("secretName"):
        want.add("tls")
    if not c.get("tls", {}).get("secretName") or c.get("authorization", {}).get("existingSecret"):
        want.add("authorization")
    assert route_security(objects, values) == want, name


def test_cluster_enabled_alone_renders_authenticated_routes():
    values = {"cluster": {"enabled": True}}
    objects = manifests(render(values))
    assert route_security(objects, values) == {"authorization"}
    secret = one(objects, "Secret", "-routes")
    assert secret["metadata"]["name"] == ROUTE_SECRET
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["user"] == "route"
    assert re.fullmatch(r"[A-Za-z0-9]{40}", data["password"]), "40 random letters and digits"
    # Never in a ConfigMap or anywhere but the Secret.
    for obj in objects:
        if obj is not secret:
            assert data["password"] not in json.dumps(obj), f"{obj['kind']} {obj['metadata']['name']}"
    # A fresh install draws a fresh password (lookup finds nothing offline).
    again = one(manifests(render(values)), "Secret", "-routes")
    assert again["data"]["password"] != secret["data"]["password"]


def test_an_existing_secret_replaces_the_charts():
    values = {"cluster": {"enabled": True, "authorization": {
        "existingSecret": "my-routes", "userKey": "u", "passwordKey": "p"}}}
    objects = manifests(render(values))
    assert not [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-routes")]
    assert route_security(objects, values) == {"authorization"}
    env = env_of(container(pod(objects), "nats"))
    assert env["ROUTE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-routes", "key": "p"}
    assert "checksum/routes" not in workload(objects)["spec"]["template"]["metadata"]["annotations"]


def test_route_tls_alone_makes_no_password():
    values = VARIANTS["cluster-tls"]
    objects = manifests(render(values))
    assert route_security(objects, values) == {"tls"}
    assert not [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-routes")]
    env = env_of(container(pod(objects), "nats"))
    assert not {"ROUTE_USER", "ROUTE_PASSWORD", "NATS_ROUTE_USER", "NATS_ROUTE_PASSWORD"} & set(env)
    assert env["NATS_ROUTE_0"]["value"].startswith('"nats://bns-bosh-nats-sync-0.'), env["NATS_ROUTE_0"]


def test_the_init_step_refuses_credentials_that_cannot_go_into_a_url():
    """The init step checks the route user and password (from the Secret) before nats-server
    could quote a route URL, password included, in an error; it never prints them."""
    import subprocess
    objects = manifests(render({"cluster": {"enabled": True}}))
    init = container(pod(objects), "auth-placeholder", init=True)
    assert [e["name"] for e in init["env"]] == ["AUTH_FILE", "ROUTE_USER", "ROUTE_PASSWORD"]
    with tempfile.TemporaryDirectory() as tmp:
        auth = pathlib.Path(tmp) / "auth.json"
        for user, password, ok in [("route", "Abc-123._~x", True), ("route", "p@ss", False),
                                   ("route", "a b", False), ("route", "", False), ("", "x", False),
                                   ("ro:ute", "x", False), ("route", "pa#ss", False)]:
            auth.unlink(missing_ok=True)
            out = subprocess.run(init["command"], env={"AUTH_FILE": str(auth), "ROUTE_USER": user,
                                                       "ROUTE_PASSWORD": password, "PATH": "/usr/bin:/bin"},
                                 capture_output=True, text=True, timeout=30)
            assert (out.returncode == 0) == ok, (user, password, out)
            assert auth.exists() == ok, (user, password)
            if not ok:
                assert "Secret bns-bosh-nats-sync-routes" in out.stderr, out.stderr
                if password:
                    assert password not in out.stderr + out.stdout
    # Without route authorization (route TLS alone) the init step has nothing to check.
    tls_init = container(pod(manifests(render(VARIANTS["cluster-tls"]))), "auth-placeholder", init=True)
    assert [e["name"] for e in tls_init["env"]] == ["AUTH_FILE"]


def test_upgrades_keep_the_route_password():
    """Helm's `lookup` returns nothing offline, so the harness cannot run an upgrade: it renders
    a copy of the chart whose one `lookup` of the route Secret returns an existing Secret, and
    checks the chart keeps that Secret's values instead of drawing new ones."""
    text = (chartlib.CHART / "templates" / "secret-routes.yaml").read_text()
    call = 'lookup "v1" "Secret" .Release.Namespace $name'
    assert text.count("lookup") == 1 and call in text, "the route Secret is looked up by its own name"
    existing = {"user": base64.b64encode(b"route").decode(),
                "password": base64.b64encode(b"Kept-Password-0123456789").decode()}
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "bosh-nats-sync"
        shutil.copytree(chartlib.CHART, copy)
        fake = "(dict \"data\" (dict \"user\" %s \"password\" %s))" % (
            json.dumps(existing["user"]), json.dumps(existing["password"]))
        (copy / "templates" / "secret-routes.yaml").write_text(text.replace(call, fake))
        with helm.Chart.load(str(copy)) as chart:
            for _ in range(2):
                rendered = chart.render({"cluster": {"enabled": True}}, name=chartlib.RELEASE,
                                        namespace=chartlib.NAMESPACE, is_upgrade=True)
                secret = one(manifests(rendered), "Secret", "-routes")
                assert secret["data"] == existing, secret["data"]
        # An existing Secret without data (emptied by hand) gets a new password.
        (copy / "templates" / "secret-routes.yaml").write_text(text.replace(call, "(dict \"data\" dict)"))
        with helm.Chart.load(str(copy)) as chart:
            rendered = chart.render({"cluster": {"enabled": True}}, name=chartlib.RELEASE,
                                    namespace=chartlib.NAMESPACE, is_upgrade=True)
            password = base64.b64decode(one(manifests(rendered), "Secret", "-routes")["data"]["password"]).decode()
            assert re.fullmatch(r"[A-Za-z0-9]{40}", password)


def test_a_cluster_block_in_extra_config_is_refused():
    for extra in ["cluster { listen: 0.0.0.0:7222 }", "CLUSTER: {}", '"cluster" = {routes: []}',
                  "ping_interval: 5\n  cluster\n{\n}", "Cluster {\n  authorization {}\n}"]:
        for enabled in (True, False):
            with pytest.raises(helm.HelmError, match="a `cluster` block is not allowed"):
                render({"cluster": {"enabled": enabled}, "nats": {"extraConfig": extra}})
    # Other settings, and keys that merely start with "cluster", still pass.
    render({"cluster": {"enabled": True}, "nats": {"extraConfig": "ping_interval: 5\ncluster_advertise_x: 1"}})


# --- lame duck and the disruption budget ------------------------------------------------------

def test_a_leaving_pod_enters_lame_duck(cluster):
    name, values, objects = cluster
    ld = {"gracePeriod": 10, "duration": 30, **values["cluster"].get("lameDuck", {})}
    conf = nats_conf(objects)
    assert re.findall(r'(?m)^lame_duck_grace_period: "(\d+)s"$', conf) == [str(ld["gracePeriod"])], conf
    assert re.findall(r'(?m)^lame_duck_duration: "(\d+)s"$', conf) == [str(ld["duration"])], conf
    spec = pod(objects)
    nats = container(spec, "nats")
    pid_file = re.findall(r'(?m)^pid_file: "([^"]+)"$', conf)[0]
    assert nats["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "--signal", f"ldm={pid_file}"]
    # Only nats-server leaves slowly; the sidecar has nothing to hand over.
    assert "lifecycle" not in container(spec, "bosh-nats-sync")
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > ld["gracePeriod"] + ld["duration"], (name, grace, ld)


def test_a_termination_grace_period_lame_duck_cannot_finish_in_is_refused():
    with pytest.raises(helm.HelmError, match=r"terminationGracePeriodSeconds \(40\) must be longer"):
        render({"cluster": {"enabled": True}, "terminationGracePeriodSeconds": 40})
    with pytest.raises(helm.HelmError, match=r"gracePeriod \(30\) must be shorter"):
        render({"cluster": {"enabled": True, "lameDuck": {"gracePeriod": 30, "duration": 30}},
                "terminationGracePeriodSeconds": 100})
    # The single pod has no lame duck and no such constraint.
    objects = manifests(render({"terminationGracePeriodSeconds": 5}))
    assert "lame_duck" not in nats_conf(objects)
    assert "lifecycle" not in container(pod(objects), "nats")


@pytest.mark.parametrize("replicas,quorum", [(2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4), (100, 51)])
def test_the_disruption_budget_is_a_quorum(replicas, quorum):
    objects = manifests(render({"cluster": {"enabled": True, "replicas": replicas}}))
    spec = one(objects, "PodDisruptionBudget")["spec"]
    assert spec == {"minAvailable": quorum, "selector": workload(objects)["spec"]["selector"]}, spec


# --- the NetworkPolicy ------------------------------------------------------------------------

def check_network_policy(objects, values):
    """Present unless turned off; selects the StatefulSet's pods; the route port admits those
    pods only (and nothing else admits it); the client and HTTP ports stay open."""
    c = values.get("cluster", {})
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if not c.get("networkPolicy", {}).get("enabled", True):
        assert not policies
        return
    (policy,) = policies
    spec = policy["spec"]
    labels = workload(objects)["spec"]["template"]["metadata"]["labels"]
    selector = workload(objects)["spec"]["selector"]["matchLabels"]
    assert spec["podSelector"]["matchLabels"] == selector
    assert spec["policyTypes"] == ["Ingress"]
    route_port = c.get("port", 6222)
    nats = container(pod(objects), "nats")
    assert chartlib.port_number(nats, "cluster") == route_port
    admitting_routes = [r for r in spec["ingress"]
                        if not r.get("ports") or any(p.get("port") in (route_port, "cluster") for p in r["ports"])]
    assert len(admitting_routes) == 1, admitting_routes
    (rule,) = admitting_routes
    assert rule["ports"] == [{"port": route_port, "protocol": "TCP"}], rule
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespaceSelector or ipBlock: this namespace's pods only"
    assert peer["podSelector"]["matchLabels"] == selector
    assert all(labels.get(k) == v for k, v in selector.items())
    open_ports = {p["port"] for r in spec["ingress"] if "from" not in r for p in r.get("ports", [])}
    assert {values.get("nats", {}).get("port", 4222), values.get("sync", {}).get("httpPort", 9758)} <= open_ports


def test_the_network_policy(cluster):
    _, values, objects = cluster
    check_network_policy(objects, values)


def test_no_network_policy_without_a_cluster():
    assert not [o for o in manifests(render({})) if o["kind"] == "NetworkPolicy"]


# --- the sweep --------------------------------------------------------------------------------

# Candidate values for every leaf of the schema's `cluster` object: a key the schema gains must be
# given candidates here, or the sweep fails, so no new value escapes it.
CANDIDATES: dict[str, list[Any]] = {
    "enabled": [True, False],
    "replicas": [2, 3, 7],
    "port": [6222, 1, 65535],
    "name": ["", "bosh-nats"],
    "podAntiAffinity": ["preferred", "required"],
    "topologyKey": ["kubernetes.io/hostname"],
    "authorization.existingSecret": ["", "my-routes"],
    "authorization.userKey": ["user", "u"],
    "authorization.passwordKey": ["password", "p"],
    "tls.secretName": ["", "route-tls"],
    "tls.timeout": [5, 0.5],
    "lameDuck.gracePeriod": [0, 10, 29, 40],
    "lameDuck.duration": [30, 120],
    "networkPolicy.enabled": [True, False],
    "networkPolicy.extraIngress": [[], [{"ports": [{"port": 9999}]}],
                                   # Refused: they would reopen the route port.
                                   [{"ports": [{"port": 6222}], "from": [{"podSelector": {}}]}],
                                   [{"from": [{"namespaceSelector": {}}]}],
                                   [{"ports": [{"port": 6000, "endPort": 7000}]}],
                                   [{"ports": [{"port": "cluster"}]}],
                                   [{"ports": [{"protocol": "TCP"}]}]],
}
# Outside the cluster object, what could change the routes or their safety.
EXTRA_CONFIGS = ["", "ping_interval: 5", "cluster { listen: 0.0.0.0:7222 }", "CLUSTER = {\n}"]
# Combined in full (the rest one at a time, on top of each combination's defaults).
SECURITY_LEAVES = ["enabled", "authorization.existingSecret", "tls.secretName", "networkPolicy.enabled"]


def schema_leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
    leaves = []
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if sub.get("type") == "object" and "properties" in sub:
            leaves += schema_leaves(sub, path + ".")
        else:
            leaves.append(path)
    return leaves


def put(values: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        values = values.setdefault(p, {})
    values[last] = value


def sweep_values():
    schema = json.loads((chartlib.CHART / "values.schema.json").read_text())
    leaves = schema_leaves(schema["properties"]["cluster"])
    assert sorted(leaves) == sorted(CANDIDATES), f"give the sweep candidates for {sorted(set(leaves) ^ set(CANDIDATES))}"
    for combo in itertools.product(*(CANDIDATES[leaf] for leaf in SECURITY_LEAVES), EXTRA_CONFIGS):
        base: dict[str, Any] = {}
        for leaf, value in zip(SECURITY_LEAVES, combo):
            put(base, leaf, value)
        yield {"cluster": base, "nats": {"extraConfig": combo[-1]}}
        if combo[-1] == "" and base["enabled"]:
            for leaf in leaves:
                if leaf in SECURITY_LEAVES:
                    continue
                for value in CANDIDATES[leaf]:
                    c = json.loads(json.dumps(base))
                    put(c, leaf, value)
                    yield {"cluster": c, "nats": {"extraConfig": ""}, "terminationGracePeriodSeconds": 300}


def test_no_values_render_routes_anyone_may_join():
    """Every combination the sweep makes either is refused (schema or template) or renders a
    nats.conf whose every cluster block authenticates each route; with cluster.enabled the
    NetworkPolicy, lame duck and quorum hold too."""
    rendered = refused = 0
    with helm.Chart.load(str(chartlib.CHART)) as chart:
        for values in sweep_values():
            try:
                chart.validate_schema(values)
                objects = manifests(chart.render(values, name=chartlib.RELEASE,
                                                 namespace=chartlib.NAMESPACE, is_install=True))
            except helm.HelmError:
                refused += 1
                continue
            rendered += 1
            conf = nats_conf(objects)
            if not values["cluster"]["enabled"]:
                assert not cluster_blocks(conf), (values, conf)
                continue
            full = {"cluster": {**values["cluster"]}}
            assert route_security(objects, full), values
            check_network_policy(objects, full)
            replicas = values["cluster"].get("replicas", 3)
            assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == replicas // 2 + 1
            assert container(pod(objects), "nats")["lifecycle"]["preStop"]["exec"]["command"][:2] == ["nats-server", "--signal"]
    # The sweep did both: rendered most combinations, refused the unsafe extraConfigs and the
    # lame-duck settings nats-server or the kubelet would not honour.
    assert rendered > 50 and refused >= 16, (rendered, refused)
