""".github/workflows and the rolling gateway deploy, checked offline.

actionlint runs when its binary is there (`make infra-check` builds it with go install); the workflows'
shape is asserted on the parsed YAML; .github/scripts/roll-gateways.sh is run for real against fake `aws`
and `curl` commands that play an autoscaling group, a target group and the Datadog monitor API.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.ci import require_module, unavailable

yaml = require_module("yaml", needed_by="workflow")

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
ROLL = ROOT / ".github" / "scripts" / "roll-gateways.sh"


def workflow(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc  # type: ignore[no-any-return]


def actionlint() -> str | None:
    built = sorted((ROOT / ".venv" / "tools").glob("actionlint-*/actionlint"))
    return str(built[-1]) if built else shutil.which("actionlint")


def test_actionlint_passes() -> None:
    exe = actionlint()
    if exe is None:
        unavailable("actionlint not built (make infra-check builds it with go install)", needed_by="workflow")
    done = subprocess.run([exe, "-color=false"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_runs_the_same_script_as_ci_run() -> None:
    ci = workflow("ci.yml")
    assert {"push", "pull_request", "workflow_call"} <= set(ci["on"])
    steps = ci["jobs"]["test"]["steps"]
    assert any(step.get("run") == "bash .ci/run" for step in steps)
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()
    assert ci["permissions"] == {"contents": "read"}


def test_release_publishes_server_and_sdk_wheels_on_a_tag() -> None:
    rel = workflow("release.yml")
    assert rel["on"] == {"push": {"tags": ["v*"]}}
    assert rel["jobs"]["test"]["uses"] == "./.github/workflows/ci.yml"
    build = "\n".join(step.get("run", "") for step in rel["jobs"]["build"]["steps"])
    assert "python -m build --outdir dist/ .\n" in build and "python -m build --outdir dist/ sdk/" in build
    for project in (ROOT / "pyproject.toml", ROOT / "sdk" / "pyproject.toml"):
        name = next(line.split('"')[1] for line in project.read_text().splitlines() if line.startswith("name ="))
        assert f"dist/{name.replace('-', '_')}-${{version}}-py3-none-any.whl" in build, name
    publish = rel["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"} and publish["needs"] == "build"
    assert any(str(step.get("uses", "")).startswith("pypa/gh-action-pypi-publish") for step in publish["steps"])


def test_deploy_is_manual_per_environment_plan_apply_then_drained_rollout() -> None:
    dep = workflow("deploy.yml")
    inputs = dep["on"]["workflow_dispatch"]["inputs"]
    envs = sorted(p.name for p in (ROOT / "terraform" / "envs").iterdir() if p.is_dir())
    assert sorted(inputs["environment"]["options"]) == envs
    jobs = dep["jobs"]
    assert jobs["apply"]["needs"] == "plan" and jobs["roll-gateways"]["needs"] == "apply"
    assert jobs["apply"]["environment"] == "${{ inputs.environment }}"  # reviewers gate the apply
    runs = "\n".join(s.get("run", "") for s in jobs["plan"]["steps"] + jobs["apply"]["steps"])
    assert "plan -input=false -out=tfplan" in runs and "apply -input=false tfplan" in runs
    assert "storm cost --tfvars" in runs  # stormday's fleet is re-derived before planning
    roll = jobs["roll-gateways"]["steps"][-1]
    assert roll["run"] == "bash .github/scripts/roll-gateways.sh"
    assert roll["env"]["MONITOR_TAGS"] == "${{ needs.apply.outputs.monitor_tags }}"
    for job in jobs.values():
        assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(job)  # OIDC only


# --- roll-gateways.sh against fakes ---------------------------------------------------------------------

FAKE_AWS = r'''
import json, sys
state_path = sys.argv[1]; args = sys.argv[2:]
state = json.load(open(state_path))
def save(): json.dump(state, open(state_path, "w"))
if args[:2] == ["autoscaling", "describe-auto-scaling-groups"]:
    # an instance told to terminate drains for one look, then leaves; the group launches a replacement
    for inst in [i for i in state["instances"] if i["state"] == "Terminating:Wait"]:
        if inst.get("seen"):
            state["instances"].remove(inst)
            state["launched"] += 1
            state["instances"].append({"id": f"i-new{state['launched']}", "version": state["version"],
                                       "state": "InService"})
        else:
            inst["seen"] = True
    save()
    print(json.dumps({"AutoScalingGroups": [{"DesiredCapacity": state["desired"],
        "LaunchTemplate": {"Version": state["version"]},
        "Instances": [{"InstanceId": i["id"], "LifecycleState": i["state"], "HealthStatus": "Healthy",
                       "LaunchTemplate": {"Version": i["version"]}} for i in state["instances"]]}]}))
elif args[:2] == ["autoscaling", "terminate-instance-in-auto-scaling-group"]:
    assert "--no-should-decrement-desired-capacity" in args
    iid = args[args.index("--instance-id") + 1]
    inst = next(i for i in state["instances"] if i["id"] == iid)
    assert inst["state"] == "InService"
    inst["state"] = "Terminating:Wait"
    state["terminated"].append(iid)
    save()
    print("{}")
elif args[:2] == ["elbv2", "describe-target-health"]:
    print(json.dumps({"TargetHealthDescriptions": [{"TargetHealth": {"State": "healthy"}}
        for i in state["instances"] if i["state"] == "InService"]}))
else:
    sys.exit(f"fake aws: unexpected {args}")
'''

FAKE_CURL = r'''
import json, sys
state_path = sys.argv[1]; args = sys.argv[2:]
state = json.load(open(state_path))
state["monitor_queries"].append(" ".join(args)); json.dump(state, open(state_path, "w"))
alert = state["alert_after_terminations"] is not None and len(state["terminated"]) >= state["alert_after_terminations"]
print(json.dumps([{"name": "STORM delivery p99: error budget burning 14.4x",
                   "overall_state": "Alert" if alert else "OK"},
                  {"name": "STORM connect success", "overall_state": "OK"}]))
'''


def run_roll(tmp_path: Path, old: int, batch: int, alert_after: int | None) -> tuple[subprocess.CompletedProcess[str],
                                                                                      dict[str, Any]]:
    if shutil.which("jq") is None:
        unavailable("roll-gateways.sh needs jq (on GitHub's runners)", needed_by="workflow")
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps({
        "desired": old, "version": "7", "launched": 0, "terminated": [], "monitor_queries": [],
        "alert_after_terminations": alert_after,
        "instances": [{"id": f"i-old{n}", "version": "6", "state": "InService"} for n in range(old)],
    }))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("aws", FAKE_AWS), ("curl", FAKE_CURL)):
        (tmp_path / f"fake_{name}.py").write_text(body)
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path}/fake_{name}.py" "{state_file}" "$@"\n')
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "ASG": "storm-stormday-gateway",
           "TARGET_GROUP_ARN": "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/gw/1",
           "MONITOR_TAGS": "service:storm,env:stormday,severity:page", "DD_API_KEY": "k", "DD_APP_KEY": "a",
           "BATCH": str(batch), "SOAK_S": "0", "POLL_S": "0", "TIMEOUT_S": "30"}
    done = subprocess.run(["bash", str(ROLL)], env=env, capture_output=True, text=True, timeout=60, check=False)
    return done, json.loads(state_file.read_text())


def test_rollout_drains_every_old_gateway_batch_by_batch(tmp_path: Path) -> None:
    done, state = run_roll(tmp_path, old=5, batch=2, alert_after=None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(state["terminated"]) == [f"i-old{n}" for n in range(5)]
    assert {i["version"] for i in state["instances"]} == {"7"} and len(state["instances"]) == 5
    assert done.stdout.count("batch 1: draining") == 2 and "batch 3: draining" in done.stdout
    assert "monitor_tags=service:storm,env:stormday,severity:page" in state["monitor_queries"][0]


def test_rollout_stops_when_an_slo_monitor_fires(tmp_path: Path) -> None:
    done, state = run_roll(tmp_path, old=6, batch=2, alert_after=2)
    assert done.returncode == 1
    assert "SLO monitors alerting" in done.stdout and "delivery p99" in done.stdout
    assert len(state["terminated"]) == 2  # the first batch only: nothing after the alert
    untouched = [i for i in state["instances"] if i["version"] == "6" and i["state"] == "InService"]
    assert len(untouched) == 4


def test_rollout_does_not_start_while_a_monitor_alerts(tmp_path: Path) -> None:
    done, state = run_roll(tmp_path, old=3, batch=1, alert_after=0)
    assert done.returncode == 1 and state["terminated"] == []
