"""The BOSH job wiring in deploy/bosh: the ERB templates render (with a bosh-template
stand-in, render_erb.rb) to what the job always wrote plus the new optional keys, and the
binary accepts the result."""

from __future__ import annotations

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


def render(template: str, properties: dict) -> str:
    out = subprocess.run([RUBY, str(pathlib.Path(__file__).parent / "render_erb.rb"),
                          str(JOB / template), json.dumps(properties)],
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
