"""The BOSH job wiring in deploy/bosh: the ERB templates render (with a bosh-template
stand-in, render_erb.rb) to what the job always wrote plus the new optional keys, and the
binary accepts the result."""

from __future__ import annotations

import base64
import copy
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
import yaml

import chartlib

JOB = chartlib.ROOT / "deploy" / "bosh" / "jobs" / "nats"
RUBY = shutil.which("ruby")
pytestmark = pytest.mark.skipif(RUBY is None, reason="ruby is not installed (apt-get install ruby)")

# The job spec's defaults for the properties the template reads.
BASE = {
    "director": {"address": "10.0.0.6", "port": 25555},
    "nats": {"director_account": {"user": "nats", "password": "nats-Sekr1t",
                                  "client_id": "", "client_secret": ""}},
    "nats-sync": {"intervals": {"poll_user_sync": 10}},
}

# What the Ruby and Go programs' template writes for BASE, key for key.
UPSTREAM = {
    "director": {
        "url": "https://10.0.0.6:25555", "user": "nats", "password": "nats-Sekr1t",
        "client_id": "", "client_secret": "",
        "ca_cert": "/var/vcap/jobs/nats/config/uaa.pem",
        "director_subject_file": "/var/vcap/data/nats/director-subject",
        "hm_subject_file": "/var/vcap/data/nats/hm-subject",
    },
    "intervals": {"poll_user_sync": 10},
    "nats": {
        "config_file_path": "/var/vcap/data/nats/auth.json",
        "nats_server_executable": "/var/vcap/packages/nats/bin/nats-server",
        "nats_server_pid_file": "/var/vcap/sys/run/bpm/nats/nats.pid",
    },
    "logfile": "/var/vcap/sys/log/nats/bosh-nats-sync.log",
}


# The instance the templates are rendered for (bosh-template's `spec`).
SPEC = {"ip": "10.0.0.6", "name": "bosh", "id": "1e5a7b8c-0000-4000-8000-000000000001"}


def render(template: str, properties: dict, spec: dict | None = None) -> str:
    out = subprocess.run([RUBY, str(pathlib.Path(__file__).parent / "render_erb.rb"),
                          str(JOB / template), json.dumps(properties), json.dumps(spec or SPEC)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def merged(*layers: dict) -> dict:
    result: dict = {}
    for layer in layers:
        stack = [(result, layer)]
        while stack:
            into, src = stack.pop()
            for k, v in src.items():
                if isinstance(v, dict):
                    stack.append((into.setdefault(k, {}), v))
                else:
                    into[k] = v
    return result


def check_config(text: str) -> str:
    exe = chartlib.binary()
    if exe is None:
        pytest.skip("bosh-nats-sync is not built")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "bosh_nats_sync_config.yml"
        path.write_text(text)
        out = subprocess.run([exe, "-c", str(path), "check-config"], capture_output=True,
                             text=True, timeout=60, env=dict(os.environ))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "unknown key" not in out.stdout, out.stdout
        return out.stdout


def test_without_new_properties_the_config_is_the_old_one():
    assert yaml.safe_load(render("templates/bosh_nats_sync_config.yml.erb", BASE)) == UPSTREAM


def test_new_properties_become_new_keys_the_binary_accepts():
    props = merged(BASE, {
        "nats": {"enable_metrics_endpoint": True},
        "nats-sync": {
            "director": {"max_concurrency": 8, "request_timeout": 20, "connection_wait_timeout": 90},
            "intervals": {"backoff_min": 2, "backoff_max": 30, "pass_timeout": 120,
                          "watch": 2, "resync": 600},
            "reload_verify_timeout": 3,
            "http": {"listen": "0.0.0.0:9100", "enabled": True},
            "log": {"format": "json", "level": "debug"},
            "damping": {"enabled": True, "max_removal_fraction": 0.3, "min_removals": 5,
                        "confirmations": 2},
        },
    })
    text = render("templates/bosh_nats_sync_config.yml.erb", props)
    config = yaml.safe_load(text)
    assert config["nats"]["monitoring_url"] == "http://127.0.0.1:8222"
    assert config["director"]["max_concurrency"] == 8
    assert config["intervals"] == {"poll_user_sync": 10, "backoff_min": 2, "backoff_max": 30,
                                   "pass_timeout": 120, "watch": 2, "resync": 600}
    assert config["http"] == {"listen": "0.0.0.0:9100", "enabled": True}
    assert config["log"] == {"format": "json", "level": "debug"}
    assert config["damping"] == {"enabled": True, "max_removal_fraction": 0.3, "min_removals": 5,
                                 "confirmations": 2}
    # Everything the old template wrote is still there, unchanged.
    for section, keys in UPSTREAM.items():
        if isinstance(keys, dict):
            assert {k: config[section][k] for k in keys} == keys
    out = check_config(text)
    assert "nats-server --signal reload" in out, out
    assert "watch every 2s, resync every 600s" in out, out


def test_the_watch_can_be_turned_off():
    """nats-sync.intervals.watch: 0 is written as is (a falsy value, not an unset one)."""
    props = merged(BASE, {"nats-sync": {"intervals": {"watch": 0}}})
    text = render("templates/bosh_nats_sync_config.yml.erb", props)
    assert yaml.safe_load(text)["intervals"] == {"poll_user_sync": 10, "watch": 0}
    out = check_config(text)
    assert "watch off" in out, out


def test_without_watch_properties_the_watch_runs_with_its_defaults():
    out = check_config(render("templates/bosh_nats_sync_config.yml.erb", BASE))
    assert "watch every 1s, resync every 300s" in out, out


def test_the_monitoring_url_can_be_overridden():
    props = merged(BASE, {"nats-sync": {"nats_monitoring_url": "http://127.0.0.1:9222"}})
    config = yaml.safe_load(render("templates/bosh_nats_sync_config.yml.erb", props))
    assert config["nats"]["monitoring_url"] == "http://127.0.0.1:9222"
    disabled = merged(BASE, {"nats": {"enable_metrics_endpoint": False}})
    config = yaml.safe_load(render("templates/bosh_nats_sync_config.yml.erb", disabled))
    assert "monitoring_url" not in config["nats"]


def test_the_old_config_is_accepted_as_is():
    check_config(render("templates/bosh_nats_sync_config.yml.erb", BASE))


def test_bpm_runs_the_binary_with_the_config():
    bpm = yaml.safe_load(render("templates/bpm.yml", {}))
    procs = {p["name"]: p for p in bpm["processes"]}
    assert set(procs) == {"nats", "bosh_nats_sync"}
    sync = procs["bosh_nats_sync"]
    assert sync["args"] == ["-c", "/var/vcap/jobs/nats/config/bosh_nats_sync_config.yml"]
    assert "env" not in sync, "no Ruby environment any more"
    # It reads nats-server's pid file and signals it: host pid namespace and the bpm run dir.
    assert sync["unsafe"]["host_pid_namespace"] is True
    assert {"path": "/var/vcap/sys/run/bpm/nats", "mount_only": True} in sync["additional_volumes"]
    assert UPSTREAM["nats"]["nats_server_pid_file"].startswith("/var/vcap/sys/run/bpm/nats/")


def test_monit_watches_both_processes_and_probes_healthz_only_when_asked():
    plain = render("monit", {})
    assert plain.count("check process") == 2 and "healthz" not in plain
    # The old checksum rule reloaded nats-server behind the controller's back; it is gone.
    assert "nats_auth_conf" not in plain
    probed = render("monit", {"nats-sync": {"monit_healthz_check": True,
                                            "http": {"listen": "0.0.0.0:9100"}}})
    assert 'if failed host 127.0.0.1 port 9100 protocol http' in probed
    assert 'request "/healthz"' in probed
    off = render("monit", {"nats-sync": {"monit_healthz_check": True, "http": {"enabled": False}}})
    assert "healthz" not in off


# ---------------------------------------------------------------------------------------
# Callout mode: properties, the pre-start (issuer key and `init`), the ops file.

OPS_FILE = chartlib.ROOT / "deploy" / "bosh" / "operations" / "callout.yml"
CALLOUT_CN = "default.nats-sync.bosh-internal"


def callout_properties(certs: chartlib.Certs, **callout) -> dict:
    cert, key = certs.issue(CALLOUT_CN)
    return merged(BASE, {
        "nats": {"tls": {"ca": certs.ca,
                         "director": {"certificate": certs.issue("default.director.bosh-internal")[0]},
                         "health_monitor": {"certificate": certs.issue("default.hm.bosh-internal")[0]}}},
        "nats-sync": {"admission": "callout",
                      "callout": {"tls": {"certificate": cert, "private_key": key}, **callout}},
    })


class Vm:
    """A director VM's /var/vcap under a temporary root: the job's rendered templates where
    BOSH puts them, the binary where the nats package has it, and the rendered pre-start run
    as it runs on the VM — only its absolute paths moved under the root and `vcap:vcap` made
    this user."""

    # Template -> where the job spec renders it (the release's and spec-templates.yml's).
    TEMPLATES = {
        "templates/bosh_nats_sync_config.yml.erb": "config/bosh_nats_sync_config.yml",
        "templates/nats_sync_callout_certificate.pem.erb": "config/nats_sync_callout_certificate.pem",
        "templates/nats_sync_callout_private_key.erb": "config/nats_sync_callout_private_key",
        "templates/nats_sync_callout_issuer_seed.erb": "config/nats_sync_callout_issuer_seed",
        "templates/pre-start.erb": "bin/pre-start",
    }

    def __init__(self, root: pathlib.Path):
        exe = chartlib.binary()
        if exe is None:
            pytest.skip("bosh-nats-sync is not built")
        self.root = root
        self.job = root / "var/vcap/jobs/nats"
        self.data = root / "var/vcap/data/nats"
        (self.job / "config").mkdir(parents=True, exist_ok=True)
        (self.job / "bin").mkdir(parents=True, exist_ok=True)
        (root / "etc/sysctl.d").mkdir(parents=True, exist_ok=True)
        package = root / "var/vcap/packages/nats/bin"
        package.mkdir(parents=True, exist_ok=True)
        link = package / "bosh-nats-sync"
        if not link.exists():
            link.symlink_to(os.path.abspath(exe))

    def moved(self, text: str) -> str:
        return (text.replace("/var/vcap/", f"{self.root}/var/vcap/")
                    .replace("/etc/sysctl.d/", f"{self.root}/etc/sysctl.d/")
                    .replace("vcap:vcap", f"{os.getuid()}:{os.getgid()}"))

    def deploy(self, properties: dict) -> None:
        """Renders the job's templates (as a deploy does); the release's own certificate
        templates are one property each."""
        spec_templates = yaml.safe_load((JOB / "spec-templates.yml").read_text())
        for template, target in self.TEMPLATES.items():
            name = template.removeprefix("templates/")
            if name in spec_templates:
                assert spec_templates[name] == target, f"spec-templates.yml: {name}"
            (self.job / target).write_text(self.moved(render(template, properties)))
        tls = properties["nats"]["tls"]
        for name, pem in [("nats_client_ca.pem", tls["ca"]),
                          ("nats_director_client_certificate.pem", tls["director"]["certificate"]),
                          ("nats_hm_client_certificate.pem", tls["health_monitor"]["certificate"])]:
            (self.job / "config" / name).write_text(pem)

    def pre_start(self) -> str:
        out = subprocess.run(["bash", str(self.job / "bin/pre-start")], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout + out.stderr

    def auth(self) -> dict:
        return json.loads((self.data / "auth.json").read_text())

    def check_config(self) -> str:
        out = subprocess.run([chartlib.binary(), "-c",
                              str(self.job / "config/bosh_nats_sync_config.yml"), "check-config"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout


def test_callout_properties_become_the_callout_keys():
    with tempfile.TemporaryDirectory() as tmp:
        props = callout_properties(chartlib.Certs(pathlib.Path(tmp)), user_ttl=600, timeout=2)
    config = yaml.safe_load(render("templates/bosh_nats_sync_config.yml.erb", props))
    assert config["nats"]["admission"] == "callout"
    assert config["nats"]["callout"] == {
        # nats-server's certificate is issued for the VM's address, not 127.0.0.1.
        "url": "tls://10.0.0.6:4222",
        "cert_file": "/var/vcap/jobs/nats/config/nats_sync_callout_certificate.pem",
        "key_file": "/var/vcap/jobs/nats/config/nats_sync_callout_private_key",
        "ca_file": "/var/vcap/jobs/nats/config/nats_client_ca.pem",
        "issuer_seed_file": "/var/vcap/data/nats/callout/issuer.seed",
        "user_ttl": 600,
        "timeout": 2,
    }
    # Everything file mode writes is still there.
    for section, keys in UPSTREAM.items():
        if isinstance(keys, dict):
            assert {k: config[section][k] for k in keys} == keys
    v6 = yaml.safe_load(render("templates/bosh_nats_sync_config.yml.erb",
                               merged(props, {"nats": {"port": 4333}}), {"ip": "fd00::6"}))
    assert v6["nats"]["callout"]["url"] == "tls://[fd00::6]:4333"
    url = yaml.safe_load(render("templates/bosh_nats_sync_config.yml.erb",
                                merged(props, {"nats-sync": {"callout": {"url": "tls://nats.bosh:4222"}}})))
    assert url["nats"]["callout"]["url"] == "tls://nats.bosh:4222"


def test_file_mode_writes_no_callout_keys_and_a_bad_admission_is_refused():
    config = yaml.safe_load(render("templates/bosh_nats_sync_config.yml.erb",
                                   merged(BASE, {"nats-sync": {"admission": "file"}})))
    assert config == UPSTREAM
    out = subprocess.run([RUBY, str(pathlib.Path(__file__).parent / "render_erb.rb"),
                          str(JOB / "templates/bosh_nats_sync_config.yml.erb"),
                          json.dumps(merged(BASE, {"nats-sync": {"admission": "calout"}})),
                          json.dumps(SPEC)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert 'nats-sync.admission: "calout" is neither file nor callout' in out.stderr


def test_the_pre_start_makes_the_issuer_key_once_and_writes_the_callout_auth_file():
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "pki").mkdir()
        props = callout_properties(chartlib.Certs(root / "pki"))
        vm = Vm(root / "vm")
        vm.deploy(props)
        first = vm.pre_start()
        seed_file = vm.data / "callout/issuer.seed"
        seed = seed_file.read_text().strip()
        assert seed.startswith("SA") and len(seed) == 58, "an nkey account seed"
        assert seed_file.stat().st_mode & 0o777 == 0o600
        assert (vm.data / "callout").stat().st_mode & 0o777 == 0o700
        assert seed not in first, "the seed reached the pre-start's output"
        auth = vm.auth()
        callout = auth["authorization"]["auth_callout"]
        assert callout["issuer"].startswith("A")
        service = f"O=Cloud Foundry, CN={CALLOUT_CN}"
        assert callout["auth_users"] == [
            "O = Cloud Foundry, CN = default.director.bosh-internal",
            "O = Cloud Foundry, CN = default.hm.bosh-internal",
            service,
        ]
        assert auth["accounts"]["SYS"]["users"][0]["user"] == service
        assert (vm.data / "director-subject").read_text().strip() == \
            "O = Cloud Foundry, CN = default.director.bosh-internal"
        # A second start (a restart, a redeploy) keeps the key: the same issuer.
        again = vm.pre_start()
        assert seed_file.read_text().strip() == seed
        assert vm.auth() == auth
        assert "made a new callout issuer key" in first and "made a new" not in again
        out = vm.check_config()
        assert "callout mode" in out, out
        # Back to file mode: the pre-start takes the callout block out before nats-server starts
        # (nats-server would refuse that change on a reload).
        vm.deploy(merged(props, {"nats-sync": {"admission": "file"}}))
        vm.pre_start()
        auth = vm.auth()
        assert "auth_callout" not in auth["authorization"], auth
        assert {u["user"] for u in auth["authorization"]["users"]} == {
            "O = Cloud Foundry, CN = default.director.bosh-internal",
            "O = Cloud Foundry, CN = default.hm.bosh-internal",
        }
        assert "nats-server --signal reload" in vm.check_config()


def test_the_operator_s_issuer_seed_is_used_in_either_form():
    exe = chartlib.binary()
    if exe is None:
        pytest.skip("bosh-nats-sync is not built")
    keys = subprocess.run([exe, "callout-keys"], capture_output=True, text=True, timeout=60)
    assert keys.returncode == 0, keys.stderr
    pairs = dict(line.split("=", 1) for line in keys.stdout.split())
    raw = base64.b64encode(os.urandom(32)).decode()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "pki").mkdir()
        certs = chartlib.Certs(root / "pki")
        issuers = []
        for seed in [pairs["ISSUER_SEED"], raw]:
            vm = Vm(root / f"vm-{len(issuers)}")
            vm.deploy(callout_properties(certs, issuer_seed=seed))
            out = vm.pre_start()
            assert seed not in out, "the seed reached the pre-start's output"
            assert (vm.data / "callout/issuer.seed").read_text().strip() == seed
            assert (vm.data / "callout/issuer.seed").stat().st_mode & 0o777 == 0o600
            issuers.append(vm.auth()["authorization"]["auth_callout"]["issuer"])
            assert "callout mode" in vm.check_config()
        assert issuers[0] == pairs["ISSUER"], "the auth file names the operator's key"
        assert issuers[1].startswith("A") and issuers[1] != issuers[0]


def apply_ops(manifest: dict, ops: list[dict]) -> dict:
    """The few go-patch forms the ops file uses: `replace` along `/key`, `/key?`,
    `/name=value` (an array element by name) and `/-` (append)."""
    result = copy.deepcopy(manifest)
    for op in ops:
        assert op["type"] == "replace", op
        parts = op["path"].strip("/").split("/")
        node = result
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            optional = part.endswith("?")
            key = part.rstrip("?")
            if key == "-":
                assert last and isinstance(node, list), op
                node.append(copy.deepcopy(op["value"]))
            elif "=" in key:
                field, value = key.split("=", 1)
                found = [e for e in node if e.get(field) == value]
                assert len(found) == 1, f"{op['path']}: {key} matches {len(found)} elements"
                assert not last, op
                node = found[0]
            elif last:
                node[key] = copy.deepcopy(op["value"])
            else:
                if key not in node:
                    assert optional, f"{op['path']}: no {key}"
                    node[key] = {}
                node = node[key]
    return result


def test_the_ops_file_gives_the_job_a_certificate_signed_by_the_nats_ca():
    """bosh-deployment's shape (bosh.yml: the `bosh` instance group, the `nats_ca` variable):
    the ops file's properties are the ones the job reads, and its certificate variable is a
    client certificate of the NATS CA with a subject of its own."""
    manifest = {
        "instance_groups": [{"name": "bosh", "jobs": [{"name": "nats", "release": "bosh"}],
                             "properties": {"nats": {"tls": {"ca": "((nats_server_tls.ca))"}}}}],
        "variables": [{"name": "nats_ca", "type": "certificate",
                       "options": {"is_ca": True, "common_name": "default.nats-ca.bosh-internal"}},
                      {"name": "nats_clients_director_tls", "type": "certificate",
                       "options": {"ca": "nats_ca", "common_name": "default.director.bosh-internal",
                                   "extended_key_usage": ["client_auth"]}}],
    }
    patched = apply_ops(manifest, yaml.safe_load(OPS_FILE.read_text()))
    props = patched["instance_groups"][0]["properties"]
    assert props["nats-sync"] == {"admission": "callout", "callout": {"tls": {
        "certificate": "((nats_sync_callout_tls.certificate))",
        "private_key": "((nats_sync_callout_tls.private_key))"}}}
    variable = [v for v in patched["variables"] if v["name"] == "nats_sync_callout_tls"]
    assert variable == [{"name": "nats_sync_callout_tls", "type": "certificate", "options": {
        "ca": "nats_ca", "common_name": CALLOUT_CN, "extended_key_usage": ["client_auth"]}}]
    assert props["nats"]["tls"]["ca"] == "((nats_server_tls.ca))", "the rest is left alone"
    # Every property the ops file sets is one the job declares.
    declared = set(yaml.safe_load((JOB / "spec-properties.yml").read_text()))
    assert {"nats-sync.admission", "nats-sync.callout.tls.certificate",
            "nats-sync.callout.tls.private_key"} <= declared
