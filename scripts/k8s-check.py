"""Checks rouse's Kubernetes manifests (deploy/k8s) without a cluster.

scripts/k8s-check installs what this needs (kubectl, kubernetes-validate in
a venv) and runs it. For each kustomization given, it:

1. renders it with `kubectl kustomize`;
2. validates every object against the Kubernetes OpenAPI schemas of each
   version given, strictly: an unknown field, a wrong type or a kind the
   schemas do not know is an error (kubernetes-validate's own CLI only
   warns about unknown kinds, so its library is called instead);
3. checks rouse's policy on every pod template: pinned images (a tag that
   is not `latest`, or a digest), requests and limits, readiness and
   liveness probes, and the restricted security context (non-root uid
   65532, read-only root filesystem, no privilege escalation, no
   capabilities, the runtime's seccomp profile);
4. extracts rouse's config from the rendered ConfigMap, runs
   `rouse-controller --check` on it, and checks that the rouse pods'
   probes reach the admin ports it configures (which must not be loopback,
   or the kubelet cannot reach them).

`--self-test` breaks the rendered objects on purpose, one way at a time,
and fails unless every breakage is caught: the checks themselves are
tested on every run.
"""

import argparse
import copy
import functools
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
import kubernetes_validate
import kubernetes_validate.utils
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# kubernetes-validate reads its schema files (megabytes of JSON) again for
# every object; the self-test validates the same few kinds two dozen times.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents)

ROUSE_PROGRAMS = ("rouse-proxy", "rouse-controller", "rouse-echo")
RUN_AS_USER = 65532


# --- rendering ---------------------------------------------------------------

def kustomize_version(kubectl):
    """The kustomize built into kubectl, as (major, minor), or None if it
    does not say (kubectl 1.20 and older embed kustomize 2)."""
    out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    match = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else None


def compat_copy(tree, workdir):
    """A copy of `tree` for kustomize 2 (Debian's kubectl 1.20), which only
    takes directories under `bases:`: the same objects, the old spelling."""
    copied = os.path.join(workdir, "compat")
    if os.path.exists(copied):
        return copied
    shutil.copytree(tree, copied)
    for root, _dirs, files in os.walk(copied):
        if "kustomization.yaml" not in files:
            continue
        path = os.path.join(root, "kustomization.yaml")
        with open(path) as f:
            doc = yaml.safe_load(f)
        resources = doc.get("resources", [])
        dirs = [r for r in resources if os.path.isdir(os.path.join(root, r))]
        if dirs:
            doc["bases"] = dirs
            doc["resources"] = [r for r in resources if r not in dirs]
            with open(path, "w") as f:
                yaml.safe_dump(doc, f)
    return copied


def render(kubectl, tree, kustomization, workdir):
    """The objects `kubectl kustomize` renders for `kustomization` (a
    directory under `tree`)."""
    version = kustomize_version(kubectl)
    if version is None or version < (4, 0):
        tree_copy = compat_copy(tree, workdir)
        kustomization = os.path.join(tree_copy, os.path.relpath(kustomization, tree))
    out = subprocess.run([kubectl, "kustomize", kustomization], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {kustomization} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


# --- the checks ---------------------------------------------------------------

def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate(objects, versions):
    problems = []
    for obj in objects:
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{name_of(obj)}: Kubernetes {version}: {path}: {e.message}")
            except SchemaNotFoundError as e:
                problems.append(f"{name_of(obj)}: {e.message}")
    return problems


def pod_spec(obj):
    """The pod template's spec of a workload, or None."""
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj.get("kind") == "Pod":
        return obj.get("spec", {})
    return None


def containers(obj):
    spec = pod_spec(obj)
    if spec is None:
        return []
    return spec.get("initContainers", []) + spec.get("containers", [])


def image_problem(image):
    if "@" in image:
        return None  # pinned by digest
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image `{image}` has no tag (which means `latest`): pin a version"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image `{image}` is `latest`: pin a version"
    return None


def effective(pod_ctx, ctx, key):
    """A container's security setting, falling back to the pod's."""
    return ctx.get(key, pod_ctx.get(key))


def policy(objects):
    problems = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        pod_ctx = spec.get("securityContext", {})
        for c in containers(obj):
            at = f"{name_of(obj)}: container {c.get('name')}"
            problem = image_problem(c.get("image", ""))
            if problem:
                problems.append(f"{at}: {problem}")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        problems.append(f"{at}: no resources.{kind}.{resource}")
            is_init = c in spec.get("initContainers", [])
            for probe in ("readinessProbe", "livenessProbe"):
                if not is_init and probe not in c:
                    problems.append(f"{at}: no {probe}")
            ctx = c.get("securityContext", {})
            if effective(pod_ctx, ctx, "runAsNonRoot") is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            if effective(pod_ctx, ctx, "runAsUser") != RUN_AS_USER:
                problems.append(f"{at}: runAsUser is not {RUN_AS_USER}")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{at}: capabilities.drop is not [ALL]")
            if ctx.get("capabilities", {}).get("add"):
                problems.append(f"{at}: capabilities are added")
            seccomp = effective(pod_ctx, ctx, "seccompProfile") or {}
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{at}: seccompProfile is not RuntimeDefault")
    return problems


def rouse_configs(objects):
    """(ConfigMap name, rouse.yaml text) for each ConfigMap holding one."""
    return [
        (obj["metadata"]["name"], obj["data"]["rouse.yaml"])
        for obj in objects
        if obj.get("kind") == "ConfigMap" and "rouse.yaml" in obj.get("data", {})
    ]


def check_config(objects, controller, workdir):
    """`rouse-controller --check` on the rendered config, and the probes of
    the rouse pods against the admin ports it sets."""
    configs = rouse_configs(objects)
    if len(configs) != 1:
        return [f"expected one ConfigMap with rouse.yaml, found {len(configs)}"], None
    name, text = configs[0]
    path = os.path.join(workdir, "rouse.yaml")
    with open(path, "w") as f:
        f.write(text)
    out = subprocess.run([controller, "--config", path, "--check"], capture_output=True, text=True)
    if out.returncode != 0:
        # Its lines are those of the file the ConfigMap was generated from.
        report = out.stderr.replace(path, f"rouse.yaml (ConfigMap {name})").rstrip()
        return [f"ConfigMap {name}: rouse-controller --check failed:\n{report}"], None
    config = yaml.safe_load(text) or {}
    problems = []
    admin = {
        "rouse-proxy": (config.get("proxy") or {}).get("admin_listen", "127.0.0.1:9090"),
        "rouse-controller": (config.get("controller") or {}).get("admin_listen", "127.0.0.1:9091"),
    }
    for obj in objects:
        for c in containers(obj):
            program = (c.get("command") or [""])[0]
            if program not in admin:
                continue
            host, port = admin[program].rsplit(":", 1)
            at = f"{name_of(obj)}: container {c.get('name')}"
            if ipaddress.ip_address(host.strip("[]")).is_loopback:
                problems.append(f"{at}: {program}'s admin_listen {admin[program]} is loopback: the kubelet's probes cannot reach it")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                target = c.get(probe, {}).get("httpGet", {}).get("port")
                target = ports.get(target, target)
                if target is not None and str(target) != port:
                    problems.append(f"{at}: {probe} probes port {target}, but admin_listen is {admin[program]}")
    return problems, config


def check(objects, versions, controller, workdir):
    problems = validate(objects, versions)
    problems += policy(objects)
    config_problems, config = check_config(objects, controller, workdir)
    return problems + config_problems, config


# --- self-test: each breakage must be caught ----------------------------------

def first_container(objects, program):
    for obj in objects:
        for c in containers(obj):
            if (c.get("command") or [""])[0] == program:
                return c
    raise SystemExit(f"self-test: no container runs {program}")


def set_config(objects, section, key, value):
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and "rouse.yaml" in obj.get("data", {}):
            config = yaml.safe_load(obj["data"]["rouse.yaml"])
            config.setdefault(section, {})[key] = value
            obj["data"]["rouse.yaml"] = yaml.safe_dump(config)


BREAKAGES = [
    ("a `latest` tag", "is `latest`",
     lambda o: first_container(o, "rouse-proxy").update(image="rouse:latest")),
    ("an untagged image", "has no tag",
     lambda o: first_container(o, "rouse-controller").update(image="rouse")),
    ("a missing readiness probe", "no readinessProbe",
     lambda o: first_container(o, "rouse-proxy").pop("readinessProbe")),
    ("a missing liveness probe", "no livenessProbe",
     lambda o: first_container(o, "rouse-controller").pop("livenessProbe")),
    ("missing limits", "no resources.limits.memory",
     lambda o: first_container(o, "rouse-proxy")["resources"].pop("limits")),
    ("an unknown field", "Additional properties are not allowed",
     lambda o: first_container(o, "rouse-proxy").update(imagePullPolicyy="Always")),
    ("a wrong type", "is not of type",
     lambda o: first_container(o, "rouse-proxy")["ports"][0].update(containerPort="8080")),
    ("root", "runAsNonRoot is not true",
     lambda o: first_container(o, "rouse-controller")["securityContext"].update(runAsNonRoot=False)),
    ("a writable root filesystem", "readOnlyRootFilesystem is not true",
     lambda o: first_container(o, "rouse-proxy")["securityContext"].pop("readOnlyRootFilesystem")),
    ("an unknown rouse config key", "rouse-controller --check failed",
     lambda o: set_config(o, "proxy", "listen_on", "0.0.0.0:8080")),
    ("a loopback admin port", "is loopback",
     lambda o: set_config(o, "proxy", "admin_listen", "127.0.0.1:9090")),
    ("a probe on the wrong port", "but admin_listen is",
     lambda o: first_container(o, "rouse-proxy")["livenessProbe"]["httpGet"].update(port=9999)),
]


def self_test(objects, versions, controller, workdir):
    failed = 0
    for what, expected, breakage in BREAKAGES:
        broken = copy.deepcopy(objects)
        breakage(broken)
        problems, _ = check(broken, versions, controller, workdir)
        if any(expected in p for p in problems):
            print(f"  caught: {what}")
        else:
            failed += 1
            print(f"  MISSED: {what} (expected a problem with `{expected}`, got {problems})")
    return failed


# --- main ---------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--controller", required=True, help="the rouse-controller binary")
    parser.add_argument("--kubernetes-version", action="append", required=True, dest="versions")
    parser.add_argument("--tree", default="deploy/k8s", help="the directory kustomizations may refer across")
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--same-settings", nargs=2, metavar=("BASE", "OVERLAY"),
                        help="two kustomizations whose rouse configs must agree outside `services`")
    parser.add_argument("kustomizations", nargs="+")
    args = parser.parse_args()

    failed = False
    configs = {}
    with tempfile.TemporaryDirectory(prefix="rouse-k8s-check.") as workdir:
        for kustomization in args.kustomizations:
            objects = render(args.kubectl, args.tree, kustomization, workdir)
            problems, config = check(objects, args.versions, args.controller, workdir)
            configs[kustomization] = config
            kinds = sorted({o["kind"] for o in objects})
            if problems:
                failed = True
                print(f"{kustomization}: {len(problems)} problem{'' if len(problems) == 1 else 's'}:")
                for p in problems:
                    print(f"  {p}")
            else:
                print(f"{kustomization}: ok: {len(objects)} objects ({', '.join(kinds)}), "
                      f"valid for Kubernetes {', '.join(args.versions)}, policy ok, rouse config ok")
            # Breakages are told apart by their own problem: only on objects
            # that pass.
            if args.self_test and not problems:
                print(f"{kustomization}: self-test (each breakage must be caught):")
                if self_test(objects, args.versions, args.controller, workdir):
                    failed = True
    if args.same_settings:
        base, overlay = (configs.get(k) for k in args.same_settings)
        for section in ("nats", "proxy", "controller"):
            if base is not None and overlay is not None and base.get(section) != overlay.get(section):
                failed = True
                print(f"{args.same_settings[1]}: rouse.yaml's `{section}` differs from "
                      f"{args.same_settings[0]}'s: keep the overlay's copy in step")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
