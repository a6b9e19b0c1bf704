#!/usr/bin/env python3
"""Checks the Helm chart, as the test command runs it (scripts/test.sh):

- `helm lint --strict` with the default values and each value set below;
- `helm template --include-crds` with each value set, every rendered object validated
  with kubernetes-validate (strict: unknown fields are errors) against each Kubernetes
  version the chart supports, 1.30 up to the newest the package knows; the Prometheus
  Operator's and cert-manager's kinds, which it has no schema for, are checked for what
  the chart relies on;
- values the schema must refuse are refused;
- the config channel's certificate: cert-manager's Certificate writes the Secret the
  operator and proxies mount; pods carry a checksum of material the chart generates;
  value sets that generate nothing render the same twice (helm template, Argo CD);
- the proxies' client TLS: certificate passed, HTTPS probes, ports named https;
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
    # The way for `helm template` (Argo CD): nothing generated at render.
    "cert-manager": [
        "configChannel.certManager.enabled=true",
        "configChannel.existingTokenSecret=my-token",
        "proxy.tls.secretName=proxy-tls",
        "proxy.service.port=443",
        "networkPolicy.enabled=true",
    ],
    "cert-manager-issuer": [
        "configChannel.certManager.enabled=true",
        "configChannel.certManager.issuerRef.name=platform-ca",
        "configChannel.certManager.issuerRef.kind=ClusterIssuer",
    ],
}

# Value sets whose output must be the same on every render: nothing generated (so
# `helm template` and Argo CD see no change between syncs).
STABLE = ["own-secrets", "cert-manager"]

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
    "configChannel.certManager.issuerRef.kind=Cluster",
    "configChannel.certManager.duration=90d",
    "configChannel.certManager.enabled=true,configChannel.existingTlsSecret=my-tls",
    "proxy.tls.secretName=Not_A_Name",
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


def deployment(objects, component):
    for o in objects:
        if o["kind"] == "Deployment" and o["metadata"]["labels"].get("app.kubernetes.io/component") == component:
            return o
    return None


def config_tls_secret(objects):
    """The Secret the operator serves the config channel's certificate from."""
    for volume in deployment(objects, "operator")["spec"]["template"]["spec"]["volumes"]:
        if volume["name"] == "tls":
            return volume["secret"]["secretName"]
    return None


def check_secrets_not_inlined(name, objects):
    """The proxy gets the CA, never the operator's private key."""
    operator_secret = config_tls_secret(objects)
    for volume in deployment(objects, "proxy")["spec"]["template"]["spec"].get("volumes", []):
        secret = volume.get("secret", {})
        items = secret.get("items", [])
        if secret.get("secretName") == operator_secret and any(item["key"] == "tls.key" for item in items):
            problem(f"{name}: the proxy mounts the operator's private key")
        if secret and not items:
            problem(f"{name}: the proxy mounts a whole Secret ({volume['name']})")


def check_certificates(name, values, objects):
    """cert-manager's kinds (no schema offline): the server Certificate writes the Secret
    the operator and proxies mount, for the operator's Service names, from an Issuer the
    chart renders or the values name; the chart then renders no certificate itself. And
    the checksum annotation follows generated material."""
    cert_manager = "configChannel.certManager.enabled=true" in values
    secret = config_tls_secret(objects)
    certificates = [o for o in objects if o["kind"] == "Certificate"]
    issuers = {o["metadata"]["name"] for o in objects if o["kind"] == "Issuer"}
    rendered_tls = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == secret]
    if not cert_manager:
        if certificates or issuers:
            problem(f"{name}: cert-manager objects without configChannel.certManager.enabled")
    else:
        if rendered_tls:
            problem(f"{name}: the chart renders the config channel's certificate although cert-manager issues it")
        server = [c for c in certificates if c["spec"].get("secretName") == secret and not c["spec"].get("isCA")]
        if len(server) != 1:
            problem(f"{name}: no Certificate writes {secret}, the Secret the operator mounts")
        for certificate in certificates:
            ref = certificate["spec"]["issuerRef"]
            external = any(v.startswith("configChannel.certManager.issuerRef.name=") for v in values)
            if ref.get("kind", "Issuer") == "Issuer" and ref["name"] not in issuers and not external:
                problem(f"{name}: Certificate {certificate['metadata']['name']} names Issuer {ref['name']}, which is not rendered")
        if server:
            service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-operator"))
            host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
            if host not in server[0]["spec"].get("dnsNames", []):
                problem(f"{name}: the config channel's Certificate is not valid for {host}")
    proxy_ca = [
        v["secret"]["secretName"]
        for v in deployment(objects, "proxy")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "ca"
    ]
    if proxy_ca != [secret]:
        problem(f"{name}: the proxy trusts the CA in {proxy_ca}, the operator serves {secret}")
    generated = any(o["kind"] == "Secret" and o["metadata"]["name"].startswith("sb-switchboard-config-") for o in objects)
    for component in ("operator", "proxy"):
        annotations = deployment(objects, component)["spec"]["template"]["metadata"].get("annotations") or {}
        if generated != ("checksum/config-channel" in annotations):
            problem(f"{name}: the {component}'s pods {'lack' if generated else 'have'} a checksum of generated material")


def check_proxy_tls(name, values, objects):
    """With proxy.tls.secretName the proxies serve HTTPS: the certificate is passed, the
    probes use HTTPS, the ports are named https."""
    tls = any(v.startswith("proxy.tls.secretName=") for v in values)
    proxy = deployment(objects, "proxy")
    container = proxy["spec"]["template"]["spec"]["containers"][0]
    args = container.get("args", [])
    if tls != any(a.startswith("--tls-cert=") for a in args):
        problem(f"{name}: proxy.tls.secretName and --tls-cert disagree")
    scheme = "HTTPS" if tls else "HTTP"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if container[probe]["httpGet"].get("scheme", "HTTP") != scheme:
            problem(f"{name}: the proxy's {probe} does not use {scheme}")
    port = "https" if tls else "http"
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-proxy"))
    if port not in {p["name"] for p in service["spec"]["ports"]}:
        problem(f"{name}: the proxy Service has no port named {port}")


def check_stable(name, values, first):
    """Renders again: the same output (nothing generated at render)."""
    again = helm("template", "sb", CHART, "-n", "switchboard", "--include-crds", *set_args(values))
    if again.stdout != first:
        problem(f"{name}: a second render differs; `helm template` (Argo CD) would see changes on every sync")


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
                if o["apiVersion"].startswith(("monitoring.coreos.com/", "cert-manager.io/")):
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
        check_certificates(name, values, objects)
        check_proxy_tls(name, values, objects)
        if name in STABLE:
            check_stable(name, values, rendered.stdout)

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
