#!/usr/bin/env python3
"""Checks the Helm chart, as the test command runs it (scripts/test.sh):

- `helm lint --strict` with the default values and each value set below;
- `helm template --include-crds` with each value set, every rendered object validated
  with kubernetes-validate (strict: unknown fields are errors) against each Kubernetes
  version the chart supports, 1.30 up to the newest the package knows; the Prometheus
  Operator's kinds, which it has no schema for, are checked for what the chart relies on;
- values the schema must refuse are refused;
- the production defaults hold in every rendered Deployment (non-root, read-only root
  filesystem, no capabilities, RuntimeDefault seccomp, probes, resources, a grace
  period longer than the drain);
- the CRDs in charts/switchboard/crds are the generated ones in crds/.

Needs `helm` on PATH and the PyPI package kubernetes-validate (the test command
installs both). Exits non-zero with every problem listed.
"""

import os
import re
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts", "switchboard")
OLDEST = (1, 30)

# name -> --set values. Each renders a configuration a platform team would run.
VALUE_SETS = {
    "defaults": [],
    "namespaced": ["watchNamespaces={team-a,team-b}", "platformNamespace=ai-platform"],
    "redis": [
        "redis.url=redis://redis.cache.svc:6379/0",
        "redis.existingSecret=redis-auth",
        "redis.cacheStore=redis",
    ],
    "monitoring": [
        "metrics.serviceMonitor.enabled=true",
        "metrics.podMonitor.enabled=true",
        "networkPolicy.enabled=true",
    ],
    "no-hpa": [
        "proxy.autoscaling.enabled=false",
        "proxy.replicas=3",
        "proxy.podDisruptionBudget.enabled=false",
        "dashboard.enabled=false",
    ],
    "own-secrets": [
        "configChannel.existingTlsSecret=my-tls",
        "configChannel.existingTokenSecret=my-token",
        "logFormat=text",
    ],
}

# --set values the schema must refuse.
REFUSED = [
    "proxy.replicas=0",
    "redis.url=http://redis:6379",
    "logFormat=yaml",
    "proxy.drainTimeout=soon",
    "watchNamespaces={Not_A_Namespace}",
    "platformNamespace=Not_A_Namespace",
    "proxy.autoscaling.targetCPUUtilizationPercentage=150",
    "unknownTopLevelKey=1",
]

problems = []


def problem(message):
    problems.append(message)
    print("FAIL: " + message, file=sys.stderr)


def helm(*args):
    return subprocess.run(["helm", *args], capture_output=True, text=True)


def set_args(values):
    out = []
    for value in values:
        out += ["--set", value]
    return out


def supported_versions():
    """Kubernetes versions from 1.30 to the newest kubernetes-validate has schemas for."""
    versions = set()
    for version in kubernetes_validate.utils.all_versions():
        match = re.match(r"^v?(\d+)\.(\d+)", version)
        if match and (int(match[1]), int(match[2])) >= OLDEST:
            versions.add((int(match[1]), int(match[2])))
    return [f"{major}.{minor}.0" for major, minor in sorted(versions)]


def check_monitoring(name, objects):
    """ServiceMonitor and PodMonitor: no schema offline, so check what matters: they
    select the chart's own objects and scrape ports that exist."""
    services = [o for o in objects if o["kind"] == "Service"]
    service_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    container_ports = {
        p["name"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    for o in objects:
        kind = o["kind"]
        if kind not in ("ServiceMonitor", "PodMonitor"):
            continue
        spec = o["spec"]
        labels = spec["selector"]["matchLabels"]
        if labels.get("app.kubernetes.io/instance") != "sb":
            problem(f"{name}: {kind} does not select the release: {labels}")
        endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints") or []
        ports = service_ports if kind == "ServiceMonitor" else container_ports
        for endpoint in endpoints:
            if endpoint.get("port") not in ports:
                problem(f"{name}: {kind} scrapes port {endpoint.get('port')!r}, which no object exposes")
            if endpoint.get("path") != "/metrics":
                problem(f"{name}: {kind} scrapes {endpoint.get('path')!r}")


def seconds(duration):
    total = 0
    for number, unit in re.findall(r"(\d+)([hms])", duration):
        total += int(number) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def check_defaults(name, objects):
    for o in objects:
        if o["kind"] != "Deployment":
            continue
        what = f"{name}: Deployment {o['metadata']['name']}"
        pod = o["spec"]["template"]["spec"]
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            problem(f"{what}: pod may run as root")
        if not pod.get("topologySpreadConstraints"):
            problem(f"{what}: no topology spread")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            expect = {
                "runAsNonRoot": True,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
            }
            for key, value in expect.items():
                if sc.get(key) is not value:
                    problem(f"{what}: container {c['name']} {key} is not {value}")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problem(f"{what}: container {c['name']} keeps capabilities")
            if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problem(f"{what}: container {c['name']} without RuntimeDefault seccomp")
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe not in c:
                    problem(f"{what}: container {c['name']} has no {probe}")
            resources = c.get("resources", {})
            if not resources.get("requests") or not resources.get("limits"):
                problem(f"{what}: container {c['name']} without requests and limits")
            drain = [a for a in c.get("args", []) if a.startswith("--shutdown-timeout=")]
            if drain:
                grace = pod.get("terminationGracePeriodSeconds", 30)
                pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                if grace <= seconds(drain[0].split("=", 1)[1]) + pause:
                    problem(f"{what}: grace period {grace}s is not longer than the drain")


def check_secrets_not_inlined(name, objects):
    """The proxy gets the CA, never the operator's private key."""
    for o in objects:
        if o["kind"] != "Deployment" or o["metadata"]["labels"].get("app.kubernetes.io/component") != "proxy":
            continue
        for volume in o["spec"]["template"]["spec"].get("volumes", []):
            items = volume.get("secret", {}).get("items", [])
            if any(item["key"] == "tls.key" for item in items):
                problem(f"{name}: the proxy mounts the operator's private key")
            if volume.get("secret") and not items:
                problem(f"{name}: the proxy mounts a whole Secret ({volume['name']})")


def main():
    versions = supported_versions()
    if len(versions) < 2:
        problem(f"kubernetes-validate knows too few versions: {versions}")
    print(f"validating against Kubernetes {', '.join(versions)}")

    for name, values in VALUE_SETS.items():
        lint = helm("lint", "--strict", CHART, *set_args(values))
        if lint.returncode != 0:
            problem(f"{name}: helm lint failed:\n{lint.stdout}{lint.stderr}")
        rendered = helm("template", "sb", CHART, "-n", "switchboard", "--include-crds", *set_args(values))
        if rendered.returncode != 0:
            problem(f"{name}: helm template failed:\n{rendered.stderr}")
            continue
        objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
        kinds = sorted({o["kind"] for o in objects})
        print(f"{name}: {len(objects)} objects ({', '.join(kinds)})")
        for version in versions:
            for o in objects:
                if o["apiVersion"].startswith("monitoring.coreos.com/"):
                    continue
                try:
                    kubernetes_validate.validate(o, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    problem(f"{name}: {o['kind']} {o['metadata']['name']} on {version}: {error.message} at {list(error.path)}")
                except kubernetes_validate.SchemaNotFoundError as error:
                    problem(f"{name}: {o['kind']} on {version}: no schema ({error})")
        check_monitoring(name, objects)
        check_defaults(name, objects)
        check_secrets_not_inlined(name, objects)

    for value in REFUSED:
        result = helm("template", "sb", CHART, "--set", value)
        if result.returncode == 0:
            problem(f"the schema accepts {value}")

    generated = os.path.join(ROOT, "crds")
    shipped = os.path.join(CHART, "crds")
    names = sorted(os.listdir(generated))
    if sorted(os.listdir(shipped)) != names:
        problem(f"charts/switchboard/crds holds {sorted(os.listdir(shipped))}, crds/ holds {names}")
    for file in names:
        with open(os.path.join(generated, file)) as a, open(os.path.join(shipped, file)) as b:
            if a.read() != b.read():
                problem(f"charts/switchboard/crds/{file} differs from crds/{file}; run `cargo run -p switchboard-api --bin crdgen`")

    if problems:
        print(f"{len(problems)} problem(s) in the chart", file=sys.stderr)
        sys.exit(1)
    print("chart: ok")


if __name__ == "__main__":
    main()
