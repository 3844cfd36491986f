"""Checks the deploy files offline (issue 19), as far as this machine can:
no Docker engine runs here and no Kubernetes cluster, so nothing is built,
pulled or applied. What is checked:

- Dockerfile: multi-stage, builds binaries the workspace has, with a Rust
  image no older than the workspace's rust-version, and runs as a numeric
  non-root user.
- deploy/compose: Debian's docker-compose parses and resolves the file
  (`config`); every Switchyard service runs a real subcommand after the
  migrations and the servers it needs are healthy; every file it mounts
  exists; the Switchyard config it mounts passes `switchyard config check`
  with the environment the compose file gives it; Prometheus scrapes every
  Switchyard process on the port it serves /metrics on.
- deploy/kubernetes: `kubectl kustomize` renders the example overlay, and
  kubernetes-validate --strict passes every resource against the schemas of
  two Kubernetes versions (only the ServiceMonitor, a CRD, has no schema); the
  structure holds together (probes on declared ports and on the paths the
  binary serves, requests and limits, non-root, HPAs, PDBs and the
  ServiceMonitor select what exists, the migrations Job, the config passes
  `switchyard config check` with the Secret's variables).

Usage: check_deploy.py ROOT SWITCHYARD_BIN KUBERNETES_VALIDATE
Prints one line per check; exits non-zero at the first failure.
"""

import base64
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT, SWITCHYARD, VALIDATE = sys.argv[1:4]
SUBCOMMANDS = {"ingress", "worker", "accounting", "dispatcher", "migrate", "all"}
# What each process serves: the ingress on its port, the others on [metrics] listen.
PROBE_PATHS = {"/healthz", "/readyz"}
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def ok(msg):
    print(f"ok   {msg}")


def run(args, env=None, cwd=None, both=False):
    """The command's stdout (and stderr, with `both`); a failure ends the check."""
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd)
    if p.returncode != 0:
        fail(f"{' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr if both else p.stdout


def config_check(path, env):
    full = dict(os.environ)
    full.update(env)
    out = run([SWITCHYARD, "config", "check", path], env=full, both=True)
    if ": OK" not in out:
        fail(f"config check {path}: {out}")
    ok(f"switchyard config check {os.path.relpath(path, ROOT)}")


def check_dockerfile():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if len(froms) < 2:
        fail(f"Dockerfile: not multi-stage: {froms}")
    m = re.match(r"rust:(\d+)\.(\d+)", froms[0])
    want = re.search(r'rust-version = "(\d+)\.(\d+)"', open(os.path.join(ROOT, "Cargo.toml")).read())
    if not m or (int(m[1]), int(m[2])) < (int(want[1]), int(want[2])):
        fail(f"Dockerfile: build image {froms[0]} older than rust-version {want[0]}")
    if "rust" in froms[-1]:
        fail("Dockerfile: the toolchain is in the runtime image")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or not users[-1].split(":")[0].isdigit() or users[-1].startswith("0"):
        fail(f"Dockerfile: runs as {users}, not a numeric non-root user")
    built = re.findall(r"--bin (\S+)", text)
    metadata = run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"], cwd=ROOT)
    bins = {
        t["name"]
        for p in json.loads(metadata)["packages"]
        for t in p["targets"]
        if "bin" in t["kind"]
    }
    if not built or not set(built) <= bins:
        fail(f"Dockerfile builds {built}; the workspace's binaries are {sorted(bins)}")
    for path in re.findall(r"^COPY\s+(?!--)(\S+)\s", text, re.M):
        if not os.path.exists(os.path.join(ROOT, path)):
            fail(f"Dockerfile copies {path}, which does not exist")
    ok(f"Dockerfile: {len(froms)} stages, builds {built}, runs as {users[-1]}")


def check_compose():
    d = os.path.join(ROOT, "deploy/compose")
    f = os.path.join(d, "docker-compose.yml")
    run(["docker-compose", "-f", f, "config", "-q"], cwd=d)
    resolved = yaml.safe_load(run(["docker-compose", "-f", f, "config"], cwd=d))
    services = resolved["services"]
    ok(f"docker-compose config: {len(services)} services")
    want = {"nats", "clickhouse", "postgres", "redis", "otel-collector", "prometheus", "grafana", "migrate", "ingress", "accounting"}
    if not want <= set(services):
        fail(f"compose lacks {sorted(want - set(services))}")
    ours = {n: s for n, s in services.items() if s.get("image") == "switchyard:local" and not n.startswith("mock")}
    workers = [n for n, s in ours.items() if s.get("command") == ["worker"]]
    if len(workers) < 2:
        fail(f"compose runs {len(workers)} workers, wants two")
    for name, s in ours.items():
        if s.get("read_only") is not True or "ALL" not in (s.get("cap_drop") or []):
            fail(f"compose service {name} has a writable root filesystem or capabilities")
        cmd = s.get("command") or []
        if not cmd or cmd[0] not in SUBCOMMANDS:
            fail(f"compose service {name} runs {cmd}, not a switchyard subcommand")
        deps = s.get("depends_on") or {}
        if name != "migrate" and deps.get("migrate", {}).get("condition") != "service_completed_successfully":
            fail(f"compose service {name} does not wait for the migrations")
        for dep, cond in deps.items():
            if dep != "migrate" and cond.get("condition") != "service_healthy":
                fail(f"compose service {name} starts before {dep} is healthy")
            if dep != "migrate" and "healthcheck" not in services[dep]:
                fail(f"compose service {dep} has no health check")
    if "healthcheck" not in services["ingress"]:
        fail("the ingress has no health check")
    for name, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith("/") and not os.path.exists(src):
                fail(f"compose service {name} mounts {src}, which does not exist")
    ok(f"compose: {len(ours)} switchyard services, read-only without capabilities, after the migrations and healthy servers; mounts exist")
    env = services["ingress"]["environment"]
    config_check(os.path.join(d, "switchyard.toml"), env)
    prom = yaml.safe_load(open(os.path.join(d, "prometheus.yml")))
    targets = {t for sc in prom["scrape_configs"] for c in sc["static_configs"] for t in c["targets"]}
    for name, s in ours.items():
        if name == "migrate":
            continue
        port = "8080" if s["command"][0] == "ingress" else "9464"
        if f"{name}:{port}" not in targets:
            fail(f"Prometheus does not scrape {name}:{port}")
    ok("compose: Prometheus scrapes every switchyard process")


def check_kubernetes():
    rendered = run(["kubectl", "kustomize", os.path.join(ROOT, "deploy/kubernetes/overlays/example")])
    docs = [x for x in yaml.safe_load_all(rendered) if x]
    kinds = {}
    for x in docs:
        kinds.setdefault(x["kind"], {})[x["metadata"]["name"]] = x
    ok(f"kubectl kustomize: {len(docs)} resources: {sorted(kinds)}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as t:
        t.write(rendered)
    for version in KUBERNETES_VERSIONS:
        out = run([VALIDATE, "--strict", "-k", version, t.name], both=True)
        passed = out.count(" passed for resource ")
        warns = [l for l in out.splitlines() if l.startswith("WARN")]
        if passed != len(docs) - len(kinds.get("ServiceMonitor", {})):
            fail(f"kubernetes-validate {version}: {passed} of {len(docs)} passed:\n{out}")
        if any("ServiceMonitor" not in w for w in warns):
            fail(f"kubernetes-validate {version}: {warns}")
        ok(f"kubernetes-validate --strict -k {version}: {passed} resources pass")
    os.unlink(t.name)

    for want in ["Deployment", "Service", "ConfigMap", "Secret", "Job", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"]:
        if want not in kinds:
            fail(f"the manifests have no {want}")
    deployments = kinds["Deployment"]
    components = {d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") for d in deployments.values()}
    if not {"ingress", "worker", "accounting"} <= components:
        fail(f"Deployments for {components}")
    secret = next(iter(kinds["Secret"].values()))
    secret_vars = set(secret.get("data", {}))
    pods = [(n, d["spec"]["template"]["spec"], False) for n, d in deployments.items()]
    pods += [(n, j["spec"]["template"]["spec"], True) for n, j in kinds["Job"].items()]
    for name, pod, is_job in pods:
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            fail(f"{name} may run as root")
        for c in pod["containers"]:
            if c["args"][0] not in SUBCOMMANDS:
                fail(f"{name} runs {c['args']}")
            res = c.get("resources", {})
            if "cpu" not in res.get("requests", {}) or "memory" not in res.get("requests", {}) or "memory" not in res.get("limits", {}):
                fail(f"{name}: no CPU and memory requests and a memory limit")
            if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                fail(f"{name}: writable root filesystem")
            refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            if refs != [secret["metadata"]["name"]]:
                fail(f"{name} reads secrets {refs}")
            if is_job:
                continue
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ["readinessProbe", "livenessProbe"]:
                get = c.get(probe, {}).get("httpGet")
                if not get or get["path"] not in PROBE_PATHS or get["port"] not in ports:
                    fail(f"{name} {probe}: {get}")
    job = next(iter(kinds["Job"].values()))
    if job["spec"]["template"]["spec"]["containers"][0]["args"] != ["migrate"]:
        fail("the Job does not run the migrations")
    ok(f"{len(pods)} pod templates: non-root, read-only, resources, probes on /healthz and /readyz")
    for kind in ["HorizontalPodAutoscaler"]:
        for n, h in kinds[kind].items():
            if h["spec"]["scaleTargetRef"]["name"] not in deployments:
                fail(f"HPA {n} scales {h['spec']['scaleTargetRef']['name']}")
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in kinds["HorizontalPodAutoscaler"].values()}
    if not {"switchyard-ingress", "switchyard-worker"} <= scaled:
        fail(f"HPAs scale {scaled}")

    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in selector.items())

    for n, p in kinds["PodDisruptionBudget"].items():
        sel = p["spec"]["selector"]["matchLabels"]
        if not any(selects(sel, d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()):
            fail(f"PDB {n} selects no Deployment's pods")
    for n, s in kinds["Service"].items():
        sel = s["spec"]["selector"]
        if not any(selects(sel, d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()):
            fail(f"Service {n} selects no Deployment's pods")
    sm = next(iter(kinds["ServiceMonitor"].values()))
    monitored = [s for s in kinds["Service"].values() if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    ports = {p["name"] for s in monitored for p in s["spec"]["ports"]}
    if len(monitored) < 3 or not {e["port"] for e in sm["spec"]["endpoints"]} <= ports:
        fail(f"ServiceMonitor selects {len(monitored)} Services with ports {ports}")
    ok("HPAs, PDBs, Services and the ServiceMonitor select what exists")
    cm = next(iter(kinds["ConfigMap"].values()))
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as t:
        t.write(cm["data"]["switchyard.toml"])
    env = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    used = set(re.findall(r"\$\{(\w+)", cm["data"]["switchyard.toml"]))
    if not used <= secret_vars:
        fail(f"the config uses {sorted(used - secret_vars)}, which the Secret does not set")
    config_check(t.name, env)
    os.unlink(t.name)


check_dockerfile()
check_compose()
check_kubernetes()
print("deploy files: all checks passed")
