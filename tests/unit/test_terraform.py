"""terraform/ checked offline (no provider can be downloaded here; see terraform/README.md, "Checks").

Every file parses (python-hcl2); `terraform fmt -check` / `tofu fmt -check` runs when such a binary is on
PATH (skipped otherwise, and the skip says so); and the properties that matter are asserted on the parsed
configuration: three zones everywhere, no security group open to the world but the load balancers'
listeners, Pulsar quorums that survive a zone, Hazelcast zone-aware partition groups, CockroachDB locality
and its zone survival goal, every secret from Secrets Manager. checkov runs in `make infra-check`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from tests.support.ci import require_module, unavailable

hcl2 = require_module("hcl2", needed_by="Terraform")  # python-hcl2, a dev dependency (pyproject.toml)

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
MODULES = TF / "modules"
ENVS = ("stormday", "staging")
LB_SECURITY_GROUPS = {("gateway", "nlb"), ("api", "alb")}  # the only groups that may face the internet


def _clean(value: Any) -> Any:
    """python-hcl2 8 keeps string quotes and marks blocks; strip both."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if not k.startswith("__")}  # __is_block__, __comments__
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@cache
def parse(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        return _clean(hcl2.load(fh))  # type: ignore[no-any-return]


def blocks(module: str, kind: str) -> dict[str, dict[str, Any]]:
    """resource/data blocks of a module: {"type.name": body}; variables/outputs/modules: {"name": body}."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((MODULES / module).glob("*.tf")):
        for entry in parse(path).get(kind, []):
            for label, body in entry.items():
                if kind in ("resource", "data"):
                    for name, inner in body.items():
                        found[f"{label}.{name}"] = inner
                else:
                    found[label] = body
    return found


def tf_files() -> list[Path]:
    return sorted(TF.rglob("*.tf"))


def tfvars(env: str) -> dict[str, Any]:
    values = parse(TF / "envs" / env / "terraform.tfvars")
    generated = TF / "envs" / env / "fleet.auto.tfvars.json"
    if generated.exists():
        values = {**values, **json.loads(generated.read_text())}
    return values


# --- parsing and formatting ---------------------------------------------------------------------------


def test_every_file_parses() -> None:
    files = tf_files()
    assert len(files) > 40
    for path in files:
        assert parse(path) is not None, path
    for path in sorted(TF.rglob("*.tf.json")) + sorted(TF.rglob("*.tfvars.json")):
        json.loads(path.read_text())
    for env in ENVS:
        assert parse(TF / "envs" / env / "terraform.tfvars")


def test_fmt_check_passes_with_every_binary_on_path() -> None:
    """``fmt -check`` with tofu and terraform, whichever are installed; neither: skipped locally, failed under
    CI=true (tests/support/ci.py)."""
    found = [exe for exe in (shutil.which("tofu"), shutil.which("terraform")) if exe]
    if not found:
        unavailable("no `tofu` or `terraform` on PATH: `fmt -check` not run (terraform/README.md, 'Checks')",
                    needed_by="Terraform")
    for exe in found:
        done = subprocess.run([exe, "fmt", "-check", "-recursive", "-diff", str(TF)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{exe}: {done.stdout}{done.stderr}"


def test_every_module_documents_its_variables_and_outputs() -> None:
    for module in sorted(p.name for p in MODULES.iterdir() if p.is_dir()):
        readme = (MODULES / module / "README.md").read_text()
        for kind, header in (("variable", "## Variables"), ("output", "## Outputs")):
            assert header in readme, (module, header)
            for name, body in blocks(module, kind).items():
                assert f"| `{name}` |" in readme, f"{module}/README.md lacks {kind} {name}"
                assert body.get("description"), f"{module}: {kind} {name} has no description"


# --- three zones everywhere -------------------------------------------------------------------------------


def test_network_spans_exactly_three_zones() -> None:
    res = blocks("network", "resource")
    for name in ("aws_subnet.public", "aws_subnet.private", "aws_nat_gateway.this", "aws_route_table.private"):
        assert res[name]["count"] == 3, name
    validation = blocks("network", "variable")["azs"]["validation"][0]["condition"]
    assert "length(var.azs) == 3" in validation and "distinct" in validation
    for env in ENVS:
        azs = blocks_env(env)["variable"]["azs"]["default"]
        assert len(set(azs)) == 3


def blocks_env(env: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {"variable": {}, "module": {}}
    for path in sorted((TF / "envs" / env).glob("*.tf")):
        for kind in found:
            for entry in parse(path).get(kind, []):
                found[kind].update(entry)
    return found


def test_every_group_is_a_multiple_of_three_over_three_private_subnets() -> None:
    group_vars = blocks("node_group", "variable")
    assert "length(var.subnet_ids) == 3" in group_vars["subnet_ids"]["validation"][0]["condition"]
    assert "% 3 == 0" in group_vars["desired_capacity"]["validation"][0]["condition"]
    calls = 0
    for module in (p.name for p in MODULES.iterdir() if p.is_dir()):
        for name, call in blocks(module, "module").items():
            if call["source"] == "../node_group":
                calls += 1
                assert call["subnet_ids"] == "${var.private_subnet_ids}", (module, name)
    assert calls == 8  # gateway, api, consumers, 3 x pulsar, hazelcast, cockroachdb
    for env in ENVS:
        fleet = tfvars(env)["fleet"]
        assert set(fleet) == {"gateway", "api", "consumers", "pulsar_broker", "pulsar_bookie", "pulsar_zookeeper",
                              "hazelcast", "cockroachdb"}
        for role, size in fleet.items():
            assert size["count"] >= 3 and size["count"] % 3 == 0, (env, role)


# --- nothing open to the world but the load balancers' listeners ------------------------------------------


def test_only_the_load_balancers_listen_to_the_internet() -> None:
    open_rules = []
    for module in (p.name for p in MODULES.iterdir() if p.is_dir()):
        res = blocks(module, "resource")
        for name, body in res.items():
            kind = name.split(".")[0]
            if kind == "aws_security_group":
                assert "ingress" not in body and "egress" not in body, f"{module}.{name}: inline rules"
            assert kind != "aws_security_group_rule", f"{module}.{name}: use vpc_security_group_*_rule"
            if kind == "aws_vpc_security_group_ingress_rule" and (
                    body.get("cidr_ipv4") == "0.0.0.0/0" or body.get("cidr_ipv6") == "::/0"):
                open_rules.append((module, body))
    assert open_rules, "the load balancers must accept clients"
    for module, body in open_rules:
        group = re.fullmatch(r"\$\{aws_security_group\.(\w+)\.id\}", body["security_group_id"])
        assert group and (module, group.group(1)) in LB_SECURITY_GROUPS, (module, body)
        assert body["from_port"] == body["to_port"] == 443, (module, body)
        res = blocks(module, "resource")
        lbs = [b for n, b in res.items() if n.startswith("aws_lb.")]
        assert any(f"${{aws_security_group.{group.group(1)}.id}}" in str(lb["security_groups"]) for lb in lbs)
        assert any(lb.get("internal") is False for lb in lbs)
    # every other public thing: instances get no public address, subnets hand none out
    assert blocks("network", "resource")["aws_subnet.public"]["map_public_ip_on_launch"] is False
    template = blocks("node_group", "resource")["aws_launch_template.this"]
    assert "network_interfaces" not in template
    assert template["metadata_options"][0]["http_tokens"] == "required"


def test_internal_tiers_admit_only_security_groups() -> None:
    for module in ("pulsar", "hazelcast", "cockroachdb"):
        for name, body in blocks(module, "resource").items():
            if name.startswith("aws_vpc_security_group_ingress_rule."):
                assert "referenced_security_group_id" in body and "cidr_ipv4" not in body, (module, name)
            if name.startswith("aws_lb."):
                assert body["internal"] is True, (module, name)


# --- Pulsar, Hazelcast, CockroachDB survive a zone --------------------------------------------------------


def survives_zone_loss(ensemble: int, write: int, ack: int, bookies: int, zones: int = 3) -> bool:
    """Rack-aware placement (rack = zone) puts at most ceil(write/zones) copies of an entry in one zone."""
    per_zone_copies = -(-write // zones)
    bookies_left = bookies - bookies // zones
    return (ack > per_zone_copies                      # an acked entry keeps a copy outside the lost zone
            and write - per_zone_copies >= ack         # ack quorum still reachable: writes go on
            and write <= ensemble <= bookies_left)     # new ensembles still form


def test_the_zone_loss_rule_is_not_vacuous() -> None:
    assert survives_zone_loss(3, 3, 2, 6)
    assert not survives_zone_loss(3, 3, 1, 6)   # the only acked copy may be in the lost zone
    assert not survives_zone_loss(3, 3, 3, 6)   # ack quorum unreachable with one zone gone
    assert not survives_zone_loss(3, 3, 2, 3)   # two bookies left cannot form an ensemble of 3
    assert not survives_zone_loss(2, 2, 2, 6)


def test_pulsar_quorums_survive_a_zone() -> None:
    variables = blocks("pulsar", "variable")
    ensemble, write, ack = (variables[k]["default"] for k in ("ensemble_size", "write_quorum", "ack_quorum"))
    for env in ENVS:
        bookies = tfvars(env)["fleet"]["pulsar_bookie"]["count"]
        assert survives_zone_loss(ensemble, write, ack, bookies), env
        assert tfvars(env)["fleet"]["pulsar_zookeeper"]["count"] == 3
    settings = _pulsar_settings()
    assert settings["managedLedgerDefaultEnsembleSize"] == "${var.ensemble_size}"
    assert settings["managedLedgerDefaultWriteQuorum"] == "${var.write_quorum}"
    assert settings["managedLedgerDefaultAckQuorum"] == "${var.ack_quorum}"
    assert settings["bookkeeperClientRackawarePolicyEnabled"] is True
    assert settings["bookkeeperClientEnforceMinNumRacksPerWriteQuorum"] is True
    assert settings["bookkeeperClientMinNumRacksPerWriteQuorum"] == 2
    assert settings["managedLedgerMaxEntriesPerLedger"] < 2**20  # the adapter's offsets (docs/operations.md)
    script = (MODULES / "pulsar" / "pulsar.sh.tftpl").read_text()
    assert 'set-bookie-rack --bookie "$STORM_PRIVATE_IP:3181" --rack "/$STORM_ZONE"' in script


def _pulsar_settings() -> dict[str, Any]:
    for path in (MODULES / "pulsar").glob("*.tf"):
        for entry in parse(path).get("locals", []):
            if "quorum_settings" in entry:
                return entry["quorum_settings"]  # type: ignore[no-any-return]
    raise AssertionError("pulsar: no quorum_settings")


def test_hazelcast_partition_groups_are_zone_aware() -> None:
    template = (MODULES / "hazelcast" / "hazelcast.yaml.tftpl").read_text()
    rendered = yaml_safe_load(template.replace("${cluster_name}", "storm").replace("${group_name}", "g")
                              .replace("${backup_count}", str(blocks("hazelcast", "variable")["backup_count"]
                                                              ["default"])))
    hz = rendered["hazelcast"]
    assert hz["partition-group"] == {"enabled": True, "group-type": "ZONE_AWARE"}
    assert hz["network"]["join"]["aws"]["enabled"] is True  # the discovery that supplies each member's zone
    assert hz["map"]["default"]["backup-count"] >= 1
    from storm.adapters.hazelcast_cache import PRESENCE_INDEXES

    # the members declare the presence indexes themselves: a cluster restarted whole serves indexed queries
    # before any client declares them again (docs/cache.md)
    indexes = hz["map"]["storm.presence"]["indexes"]
    assert [(i["type"], tuple(i["attributes"])) for i in indexes] == [("HASH", a) for a in PRESENCE_INDEXES]
    assert hz["map"]["storm.presence"]["backup-count"] == hz["map"]["default"]["backup-count"]
    for env in ENVS:
        assert tfvars(env)["fleet"]["hazelcast"]["count"] % 3 == 0


def yaml_safe_load(text: str) -> Any:
    yaml = require_module("yaml", needed_by="Terraform")
    return yaml.safe_load(text)


def test_cockroachdb_nodes_carry_their_zone_and_the_database_survives_a_zone() -> None:
    script = (MODULES / "cockroachdb" / "cockroachdb.sh.tftpl").read_text()
    assert "--locality=region=${region},zone=$STORM_ZONE" in script
    assert "cockroach node drain" in script
    variables = blocks("cockroachdb", "variable")
    assert variables["survival_goal"]["default"] == "zone"
    from storm_cli.main import build_parser

    args = build_parser().parse_args(["migrate", "--regions", "eu-west-1", "--survive", "zone", "--dry-run"])
    assert args.survive == "zone"  # the README's `storm migrate` line is a real command
    assert "storm migrate --regions" in (TF / "README.md").read_text()
    for env in ENVS:
        assert tfvars(env)["fleet"]["cockroachdb"]["count"] >= 3


# --- secrets ------------------------------------------------------------------------------------------------

SECRETISH = re.compile(r"(secret|password|passwd|api_key|token|private_key)$", re.I)


def test_no_secret_is_a_variable_default_or_a_literal() -> None:
    for module in (p.name for p in MODULES.iterdir() if p.is_dir()):
        for name, body in blocks(module, "variable").items():
            if SECRETISH.search(name) and not name.endswith("_arn"):
                assert "default" not in body and body.get("sensitive") is True, (module, name)
    for path in list(TF.rglob("*.tf")) + list(TF.rglob("*.tftpl")) + list(TF.rglob("*.tfvars*")):
        text = path.read_text()
        assert "BEGIN PRIVATE KEY" not in text and "BEGIN RSA" not in text, path
        # a literal credential: a long space-free string assigned to a secret-like name
        assert not re.search(r"(?i)\w*(password|secret|api_key|token)\s*=\s*\"[^\"\s$]{12,}\"", text), path


def test_every_secret_comes_from_secrets_manager() -> None:
    secrets = blocks("secrets", "resource")
    assert secrets["aws_secretsmanager_secret.this"]["kms_key_id"] == "${aws_kms_key.this.arn}"
    assert secrets["aws_kms_key.this"]["enable_key_rotation"] is True
    # the hosts read secrets only through `secret <arn>` (aws secretsmanager get-secret-value, the instance role)
    bootstrap = (MODULES / "node_group" / "bootstrap.sh.tftpl").read_text()
    assert "secret() { aws secretsmanager get-secret-value" in bootstrap
    assert 'DD_API_KEY=$(secret "${datadog_api_key_secret_arn}")' in bootstrap
    role = (MODULES / "node_group" / "storm_role.sh.tftpl").read_text()
    assert 'STORM_DATABASE_URL=$(secret "${database_url_secret_arn}")' in role
    for path in MODULES.rglob("*.tftpl"):
        for call in re.findall(r'secret "\$\{(\w+)\}"', path.read_text()):
            assert call.endswith("_secret_arn"), (path, call)
    # the instance role reads named secrets, never "*"
    policy = blocks("node_group", "data")["aws_iam_policy_document.role"]["statement"]
    read = next(s for s in policy if s.get("sid") == "ReadOwnSecrets")
    assert read["actions"] == ["secretsmanager:GetSecretValue"] and read["resources"] != ["*"]
    assert "var.secret_arns" in str(read["resources"])
    # the only secret value Terraform knows (Auth0's) goes straight into Secrets Manager
    version = secrets["aws_secretsmanager_secret_version.auth0_provisioning"]
    assert version["secret_string"] == "${var.auth0_provisioning_client_secret}"


def test_volumes_are_encrypted_and_instances_use_imdsv2() -> None:
    template = blocks("node_group", "resource")["aws_launch_template.this"]
    assert template["block_device_mappings"][0]["ebs"][0]["encrypted"] is True
    dynamic = template["dynamic"][0]["block_device_mappings"]["content"][0]["ebs"][0]
    assert dynamic["encrypted"] is True


def test_auth0_api_matches_what_storm_checks() -> None:
    res = blocks("auth0", "resource")
    api = res["auth0_resource_server.storm"]
    assert api["signing_alg"] == "RS256"
    scopes = {s["name"] for s in res["auth0_resource_server_scopes.storm"]["scopes"]}
    from storm.config import Config
    from tenants.service import CREATE_SCOPE

    assert set(Config().auth0_required_scopes.split()) <= scopes and CREATE_SCOPE in scopes
    assert res["auth0_client_grant.provisioning"]["scopes"] == [CREATE_SCOPE]


def test_gateway_drain_matches_storms_drain() -> None:
    res = blocks("gateway", "resource")
    tg = res["aws_lb_target_group.this"]
    assert tg["connection_termination"] is True
    assert tg["deregistration_delay"] == "${var.drain_timeout_s + var.drain_reconnect_spread_s + 15}"
    assert tg["health_check"][0]["path"] == "/healthz"
    variables = blocks("gateway", "variable")
    from storm.config import Config

    cfg = Config()
    assert variables["drain_timeout_s"]["default"] == cfg.drain_timeout_s
    assert variables["drain_reconnect_spread_s"]["default"] == cfg.drain_reconnect_spread_s
    assert res["aws_lb_listener.wss"]["protocol"] == "TLS"
    policy = res["aws_autoscaling_policy.connections"]["target_tracking_configuration"][0]
    assert policy["customized_metric_specification"][0]["metric_name"] == "Connections"


# --- wiring: what `terraform validate` would catch first, checked without providers -----------------------

def _module_dirs() -> list[Path]:
    return sorted([p for p in MODULES.iterdir() if p.is_dir()] + [TF / "envs" / e for e in ENVS])


def _parsed(directory: Path) -> list[dict[str, Any]]:
    """The .tf files, and the .tf.json ones (terraform/datadog is generated as JSON) in the same shape."""
    docs = [parse(p) for p in sorted(directory.glob("*.tf"))]
    for path in sorted(directory.glob("*.tf.json")):
        doc = json.loads(path.read_text())
        docs.append({kind: [doc[kind]] for kind in ("variable", "output", "module") if isinstance(doc.get(kind), dict)})
    return docs


def _names(directory: Path, kind: str) -> set[str]:
    return {name for doc in _parsed(directory) for entry in doc.get(kind, []) for name in entry}


def test_module_calls_match_the_called_modules() -> None:
    meta = {"source", "providers", "depends_on", "count", "for_each", "version"}
    for directory in _module_dirs():
        for doc in _parsed(directory):
            for entry in doc.get("module", []):
                for name, call in entry.items():
                    target = (directory / call["source"]).resolve()
                    variables = {v: body for d in _parsed(target) for e in d.get("variable", [])
                                 for v, body in e.items()}
                    given = set(call) - meta
                    unknown = given - set(variables)
                    assert not unknown, f"{directory.name}: module {name} passes unknown {unknown}"
                    required = {v for v, body in variables.items() if "default" not in body}
                    assert required <= given, f"{directory.name}: module {name} misses {required - given}"


def test_references_resolve() -> None:
    for directory in _module_dirs():
        text = "\n".join(p.read_text() for p in sorted(directory.glob("*.tf")))
        variables = _names(directory, "variable")
        for ref in set(re.findall(r"\bvar\.(\w+)", text)):
            assert ref in variables, f"{directory.name}: var.{ref} is not declared"
        calls = {name: (directory / call["source"]).resolve() for doc in _parsed(directory)
                 for entry in doc.get("module", []) for name, call in entry.items()}
        for module, output in set(re.findall(r"\bmodule\.(\w+)\.(\w+)", text)):
            assert module in calls, f"{directory.name}: module.{module} is not called"
            assert output in _names(calls[module], "output"), f"{directory.name}: module.{module}.{output} missing"


def test_templates_get_every_variable_they_use() -> None:
    pattern = re.compile(r'templatefile\("\$\{path\.module\}/([^"]+)", \{(.*?)\n\s*\}\)', re.S)
    checked = 0
    for directory in sorted(p for p in MODULES.iterdir() if p.is_dir()):
        for path in directory.glob("*.tf"):
            for template, args in pattern.findall(path.read_text()):
                body = (directory / template).read_text()
                body = re.sub(r"\$\$\{", "", body)  # $${...} is a literal ${...} for the shell
                ident = r"([a-z_][a-z0-9_]*)"
                used = set(re.findall(r"(?<!\$)\$\{\s*" + ident, body)) | set(re.findall(r"%\{\s*if\s+" + ident, body))
                used |= set(re.findall(r"%\{\s*for\s+\w+,\s*\w+\s+in\s+" + ident, body))
                used -= {n for pair in re.findall(r"%\{\s*for\s+(\w+),\s*(\w+)\s+in", body) for n in pair}
                given = set(re.findall(r"(?:^|[\s,{])" + ident + r"\s*=", args))
                assert used <= given, f"{path.relative_to(TF)}: {template} needs {used - given}"
                checked += 1
    assert checked >= 9  # the nested hazelcast.yaml call is read with its parent (and rendered by its own test)
