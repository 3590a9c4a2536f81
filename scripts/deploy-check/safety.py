"""What makes rendered manifests safe to apply, beyond their schemas.

Usage: python3 safety.py RENDERED_DIR   (one <kustomization>.yaml per
kustomization, as scripts/check-deploy.sh renders them with kustomize)

Each rule says why it exists; the first broken one is reported with the
rendered file it broke in, and the exit code is 1.
"""

import glob
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = "".join(
    open(f).read() for f in glob.glob(os.path.join(ROOT, "src/**/*.rs"), recursive=True)
)
# The only kustomization allowed to carry Secrets (placeholder values, for a
# throwaway cluster): anything else must never overwrite real ones.
SECRETS_ALLOWED = {"k8s-overlays-dev"}


class Broken(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Broken(message)


def objects(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def config_values(docs):
    values = {}
    for cm in find(docs, "ConfigMap", "middleway"):
        values.update(cm.get("data", {}))
    return values


def mounted(container):
    return [m["mountPath"].rstrip("/") + "/" for m in container.get("volumeMounts", [])]


def under_mount(path, container):
    return any(path.startswith(m) for m in mounted(container))


def check_deployment(name, docs):
    deployment = find(docs, "Deployment", "middleway")
    if not deployment:
        return
    deployment = deployment[0]
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "middleway"]
    config = config_values(docs)

    # An autoscaler owns the replica count: a `replicas` field would reset it
    # on every apply.
    scaled = find(docs, "HorizontalPodAutoscaler") or find(docs, "ScaledObject")
    check(scaled, "nothing scales the Deployment (an HPA or a KEDA ScaledObject)")
    check("replicas" not in deployment["spec"], "Deployment sets replicas, which the autoscaler owns")
    check(len(scaled) == 1, "two autoscalers fight over the Deployment")

    # The pause after SIGTERM is the service's own (SHUTDOWN_DELAY_S): no
    # preStop `sleep` action (Kubernetes 1.30+) and no exec (no shell in the image).
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    check("sleep" not in pre_stop and "exec" not in pre_stop,
          "a preStop sleep/exec hook: needs Kubernetes 1.30+ or a shell; use SHUTDOWN_DELAY_S")
    delay = int(config.get("SHUTDOWN_DELAY_S", "0"))
    drain = int(config.get("SHUTDOWN_TIMEOUT_S", "25"))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(grace > delay + drain,
          f"terminationGracePeriodSeconds {grace} <= SHUTDOWN_DELAY_S {delay} + SHUTDOWN_TIMEOUT_S {drain}")

    # Every variable set is one the service reads (a typo is silently ignored otherwise).
    # (RUST_LOG is read by tracing's EnvFilter; a variable may also exist only
    # to be expanded into another, like a password into a URL.)
    env_names = [e["name"] for e in container.get("env", [])]
    expanded = {
        ref for e in container.get("env", []) for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", ""))
    }
    for var in list(config) + env_names:
        check(f'"{var}"' in SOURCE or var == "RUST_LOG" or var in expanded,
              f"{var} is not a variable the service reads")
    # $(VAR) in a value names a variable defined before it (Kubernetes leaves
    # an undefined reference as literal text: a broken URL at run time).
    defined = set(config)
    for env in container.get("env", []):
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", env.get("value", "")):
            check(ref in defined, f"{env['name']} uses $({ref}), not defined before it")
        defined.add(env["name"])
    check("DATABASE_URL" in env_names and "REDIS_URL" in env_names, "DATABASE_URL and REDIS_URL are set")

    values = dict(config)
    values.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    for var, value in values.items():
        for path in re.findall(r"ssl-ca=([^&]+)", value):
            check(under_mount(path, container), f"{var}'s CA {path} is not in a mounted volume")
    for var in ("TLS_CERT_FILE", "TLS_KEY_FILE", "REDIS_TLS_CA_FILE", "API_KEYS_FILE"):
        if var in values:
            check(under_mount(values[var], container), f"{var} {values[var]} is not in a mounted volume")
    # With TLS on the listener the probes must speak HTTPS (plain HTTP is refused).
    tls = "TLS_CERT_FILE" in values
    for probe in ("readinessProbe", "livenessProbe"):
        scheme = container[probe]["httpGet"].get("scheme", "HTTP")
        check(scheme == ("HTTPS" if tls else "HTTP"), f"{probe} speaks {scheme} to a {'TLS' if tls else 'plain'} listener")

    # Services reach the pods: selectors match, target ports exist.
    labels = pod["metadata"]["labels"]
    ports = {p["name"] for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
    for service in find(docs, "Service"):
        selector = service["spec"]["selector"]
        check(all(labels.get(k) == v for k, v in selector.items()),
              f"Service {service['metadata']['name']} selects no middleway pod")
        for port in service["spec"]["ports"]:
            check(port["targetPort"] in ports, f"Service {service['metadata']['name']} targets a port the pod lacks")
    for policy in find(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        check(all(labels.get(k) == v for k, v in selector.items()),
              f"NetworkPolicy {policy['metadata']['name']} selects no middleway pod")
    # A disruption budget the autoscaler's floor can satisfy (else drains block).
    for pdb in find(docs, "PodDisruptionBudget"):
        floor = min(s["spec"].get("minReplicas", s["spec"].get("minReplicaCount", 1)) for s in scaled)
        check(pdb["spec"]["minAvailable"] < floor, "PodDisruptionBudget minAvailable >= the autoscaler's minimum")


def check_aws(docs):
    """The AWS overlay: verified TLS to both backends, an internal NLB open only to the functions."""
    (deployment,) = find(docs, "Deployment", "middleway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    check("ssl-mode=verify_identity" in env["DATABASE_URL"], "Aurora without ssl-mode=verify_identity")
    check(env["REDIS_URL"].startswith("rediss://"), "ElastiCache without TLS (rediss://)")
    (nlb,) = [s for s in find(docs, "Service") if s["spec"].get("type") == "LoadBalancer"]
    notes = nlb["metadata"]["annotations"]
    check(notes.get("service.beta.kubernetes.io/aws-load-balancer-scheme") == "internal", "the NLB is not internal")
    check(notes.get("service.beta.kubernetes.io/aws-load-balancer-nlb-target-type") == "ip", "the NLB targets nodes, not pods")
    cidrs = [
        peer["ipBlock"]["cidr"]
        for policy in find(docs, "NetworkPolicy")
        for rule in policy["spec"].get("ingress", [])
        for peer in rule.get("from", [])
        if "ipBlock" in peer
    ]
    check(cidrs, "no NetworkPolicy admits the functions' CIDR")
    (namespace,) = find(docs, "Namespace")
    check(namespace["metadata"]["labels"].get("elbv2.k8s.aws/pod-readiness-gate-inject") == "enabled",
          "without the NLB's readiness gate a rollout can outrun the NLB's health checks")
    check(nlb["spec"]["loadBalancerSourceRanges"] == cidrs,
          f"the NLB's source ranges {nlb['spec']['loadBalancerSourceRanges']} are not the functions' CIDR {cidrs}")


def image(docs, kind):
    return [c["image"] for d in find(docs, kind) for c in d["spec"]["template"]["spec"]["containers"]]


def main(rendered):
    renders = {
        os.path.basename(p)[: -len(".yaml")]: objects(p) for p in sorted(glob.glob(f"{rendered}/*.yaml"))
    }
    for name, docs in renders.items():
        try:
            if name not in SECRETS_ALLOWED:
                check(not find(docs, "Secret"), "creates a Secret: applying it would overwrite the real one")
            check(not (find(docs, "Job") and find(docs, "Deployment")),
                  "the migrations Job ships with the Deployment: run it first, on its own (k8s/migrate)")
            check_deployment(name, docs)
            if name == "k8s-overlays-aws":
                check_aws(docs)
        except Broken as broken:
            sys.exit(f"check-deploy: {name}: {broken}")
    # The migrations run the version the Deployment will run.
    check_images = image(renders["k8s-migrate"], "Job") == image(renders["k8s-base"], "Deployment")
    if not check_images:
        sys.exit("check-deploy: k8s/migrate's image differs from k8s/base's")
    print(f"check-deploy: {len(renders)} kustomizations safe to apply")


if __name__ == "__main__":
    main(sys.argv[1])
