"""Offline validation of deploy/kubernetes/ (run by scripts/k8s-validate.sh, in its virtualenv).

Checks, each counted as passed or failed:
- every YAML document under deploy/kubernetes/ (kustomization files aside) against the Kubernetes
  API schema of each version given, strict (an unknown field fails; an unknown kind fails: no
  schema is no pass), plus what the schema cannot say: volume mounts name a volume of the pod;
- the kustomize build of every directory with a kustomization.yaml (what an operator applies),
  the same way; and that every manifest is used by a kustomization (or is a listed example);
- router.toml in each ConfigMap: TOML, only the router's keys, valid prefixes;
- the Flannel chaining example: its net-conf.json Network equals Slim's prefixes; its CNI
  conflist follows the CNI specification (and the real portmap plugin accepts its cniVersion,
  when the plugin is installed);
- the containerd runtime handler snippets: TOML, handler named as the RuntimeClass, runc.v2 with
  slim-oci as BinaryName, io.slim/enable passed through;
- the Node objects of slim-k8s-peers' test fixture against the v1 Node schema;
- negative checks: copies of a manifest with a misspelt field, a wrong type, an unknown kind, a
  dangling volume mount, and a router.toml with an unknown key must each fail.
"""

import argparse
import copy
import fnmatch
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

# The keys slim-router accepts in router.toml (the agreed interface; the router refuses others).
ROUTER_KEYS = {
    "host_addrs", "prefixes", "socket", "socket_mode", "peer_listen", "peers", "peers_file",
    "cluster_key", "insecure_peer_channel", "lease_ports", "secure", "log_level", "metrics_listen",
}
# Manifests that no kustomization applies, on purpose.
EXAMPLES_NOT_APPLIED = {"chaining/flannel/kube-flannel-cfg.yaml"}
# Objects the manifests reference that the operator creates (README.md).
OPERATOR_CREATED = {("Secret", "slim-cluster-key")}
CNI_VERSIONS = {"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
CNI_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, problems):
        """Records one check: `problems` is a list of strings, empty when it passed."""
        if problems:
            self.failed += 1
            print(f"FAIL {name}")
            for p in problems:
                print(f"     {p}")
        else:
            self.passed += 1
            print(f"ok   {name}")


# ---- Kubernetes objects ---------------------------------------------------------------------

def schema_problems(doc, versions):
    """Every schema error of one object, for every version (empty: valid). kubernetes-validate's
    validate() is the verdict; it names only the first error, so on a failure the others are
    listed too, from the same schema files (kubernetes-validate is pinned)."""
    out = []
    for v in versions:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors = all_schema_errors(doc, v) or [e]
            out += [f"{kind_name(doc)} against {v}: {'.'.join(str(p) for p in x.path)}: {x.message}"
                    for x in errors]
        except kubernetes_validate.SchemaNotFoundError as e:
            out.append(f"{kind_name(doc)} against {v}: no schema: {e.message}")
    return out


def all_schema_errors(doc, desired):
    """All errors, with the schema kubernetes-validate.validate() picks (its own lookup)."""
    from kubernetes_validate import utils as kvu
    version = [x for x in kvu.all_versions()
               if kvu.major_minor(x) <= kvu.major_minor(desired)][-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    d = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kvu.schema_contents(f"{d}/{doc['kind'].lower()}-{api}.json", desired)
    defs = kvu.schema_contents(f"{d}/_definitions.json", desired)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.path])


def kind_name(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        return spec
    tmpl = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
    return (tmpl or {}).get("spec")


def mount_problems(doc):
    """Volume mounts that name no volume of the pod (the API server refuses those)."""
    spec = pod_spec(doc)
    if not spec:
        return []
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    out = []
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                out.append(f"{kind_name(doc)}: container {c.get('name')} mounts "
                           f"volume {m.get('name')!r}, which the pod does not define")
    return out


def reference_problems(docs):
    """ConfigMaps and Secrets a pod uses that neither the documents nor the operator create."""
    have = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in docs} | OPERATOR_CREATED
    out = []
    for d in docs:
        spec = pod_spec(d)
        if not spec:
            continue
        refs = []
        for v in spec.get("volumes") or []:
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"].get("name")))
            if "secret" in v:
                refs.append(("Secret", v["secret"].get("secretName")))
            for s in (v.get("projected") or {}).get("sources") or []:
                if "configMap" in s:
                    refs.append(("ConfigMap", s["configMap"].get("name")))
                if "secret" in s:
                    refs.append(("Secret", s["secret"].get("name")))
        if spec.get("serviceAccountName"):
            refs.append(("ServiceAccount", spec["serviceAccountName"]))
        out += [f"{kind_name(d)} uses {k} {n!r}, which nothing creates" for k, n in refs
                if (k, n) not in have]
    return out


def object_problems(docs, versions):
    out = []
    for d in docs:
        if not isinstance(d, dict):
            out.append(f"a document is not a mapping: {d!r:.60}")
            continue
        out += schema_problems(d, versions) + mount_problems(d)
    return out


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomize(kubectl, directory):
    r = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory}: {r.stderr.strip()}")
    return [d for d in yaml.safe_load_all(r.stdout) if d is not None]


def kustomization_files(kdir, patches_only=False):
    """Files a kustomization.yaml uses directly (resources that are files, and patches)."""
    k = load_docs(kdir / "kustomization.yaml")[0]
    used = set()
    for r in [] if patches_only else k.get("resources") or []:
        p = (kdir / r).resolve()
        if p.is_file():
            used.add(p)
    for p in k.get("patches") or []:
        if "path" in p:
            used.add((kdir / p["path"]).resolve())
    return used


# ---- router.toml, CNI, containerd -----------------------------------------------------------

def router_toml_problems(text):
    try:
        conf = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [f"router.toml is not TOML: {e}"]
    out = [f"router.toml: unknown key {k!r} (the router refuses it)" for k in conf
           if k not in ROUTER_KEYS]
    for p in conf.get("prefixes", []):
        try:
            ipaddress.ip_network(p)
        except ValueError as e:
            out.append(f"router.toml: prefix {p!r}: {e}")
    if "host_addrs" in conf:
        out.append("router.toml: host_addrs differ per node; the DaemonSet passes --host-addr")
    return out


def router_tomls(docs):
    return {kind_name(d): d["data"]["router.toml"] for d in docs
            if d.get("kind") == "ConfigMap" and "router.toml" in (d.get("data") or {})}


def conflist_problems(text):
    try:
        c = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"not JSON: {e}"]
    out = []
    if not isinstance(c.get("name"), str) or not CNI_NAME.match(c["name"]):
        out.append(f"name {c.get('name')!r} is not a CNI network name")
    if c.get("cniVersion") not in CNI_VERSIONS:
        out.append(f"cniVersion {c.get('cniVersion')!r} is not a CNI spec version")
    plugins = c.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        out.append("plugins must be a non-empty list")
        plugins = []
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            out.append(f"plugins[{i}] has no type")
    if "disableCheck" in c and not isinstance(c["disableCheck"], bool):
        out.append("disableCheck must be a boolean")
    return out


def cni_plugin_problems(text):
    """The installed portmap plugin's own word on the conflist's cniVersion (CNI VERSION)."""
    c = json.loads(text)
    for d in ("/usr/lib/cni", "/opt/cni/bin"):
        plugin = Path(d) / "portmap"
        if plugin.exists():
            conf = dict(next(p for p in c["plugins"] if p["type"] == "portmap"),
                        name=c["name"], cniVersion=c["cniVersion"])
            env = dict(os.environ, CNI_COMMAND="VERSION")
            r = subprocess.run([str(plugin)], input=json.dumps(conf), env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                return [f"{plugin} VERSION: {r.stdout}{r.stderr}"]
            supported = json.loads(r.stdout).get("supportedVersions", [])
            if c["cniVersion"] not in supported:
                return [f"{plugin} supports {supported}, not {c['cniVersion']}"]
            return []
    return None


def containerd_problems(path, plugin_id, runtime_class_handlers):
    try:
        conf = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        return [f"{path.name} is not TOML: {e}"]
    runtimes = conf.get("plugins", {}).get(plugin_id, {}).get("containerd", {}).get("runtimes", {})
    out = []
    for h in runtime_class_handlers:
        rt = runtimes.get(h)
        if rt is None:
            out.append(f"{path.name}: no runtime handler {h!r} under plugins.{plugin_id!r}")
            continue
        if rt.get("runtime_type") != "io.containerd.runc.v2":
            out.append(f"{path.name}: runtime_type is {rt.get('runtime_type')!r}")
        if rt.get("options", {}).get("BinaryName") != "/usr/local/bin/slim-oci":
            out.append(f"{path.name}: options.BinaryName is not /usr/local/bin/slim-oci")
        if not any(fnmatch.fnmatchcase("io.slim/enable", g) for g in rt.get("pod_annotations", [])):
            out.append(f"{path.name}: pod_annotations does not pass io.slim/enable through")
    return out


def shell_scripts(docs):
    """(where, script) of every container whose command is a POSIX shell with a script argument."""
    for d in docs:
        spec = pod_spec(d) or {}
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            cmd = c.get("command") or []
            if cmd[:1] == ["/bin/sh"] and c.get("args"):
                yield f"{kind_name(d)} container {c['name']}", c["args"][0]


def shellcheck_problems(script):
    try:
        r = subprocess.run(["shellcheck", "--shell=sh", "--severity=warning", "-"],
                           input=script, capture_output=True, text=True)
    except FileNotFoundError:
        return ["shellcheck is not installed: run scripts/install-deps.sh"]
    return [line for line in r.stdout.splitlines() if line.strip()] if r.returncode else []


def router_caps_problems(docs, target):
    ds = next((d for d in docs if d.get("kind") == "DaemonSet"), None)
    c = next((c for c in (pod_spec(ds) or {}).get("containers", []) if c["name"] == "router"), None)
    if c is None:
        return ["no DaemonSet with a container `router` in the base build"]
    caps = (c.get("securityContext") or {}).get("capabilities") or {}
    if caps.get("drop") != ["ALL"]:
        return [f"the router drops {caps.get('drop')}, not [ALL]: the test would not match it"]
    setpriv = ",".join("+" + x.lower() for x in caps.get("add") or []) or "-all"
    script = Path(__file__).with_name("router-caps.sh")
    r = subprocess.run([str(script), setpriv, target], capture_output=True, text=True)
    print("\n".join("     " + line for line in (r.stdout + r.stderr).splitlines()))
    return [] if r.returncode == 0 else [f"router-caps.sh exited {r.returncode}"]


# ---- the run ---------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--k8s-versions", required=True)
    ap.add_argument("--router-caps", metavar="TARGET_DIR",
                    help="also run two routers from TARGET_DIR with the DaemonSet's capabilities "
                         "(root; router-caps.sh)")
    a = ap.parse_args()
    versions = a.k8s_versions.split()
    root = a.repo / "deploy" / "kubernetes"
    rep = Report()
    print(f"k8s-validate: kubernetes-validate {kubernetes_validate.__version__}, "
          f"Kubernetes {', '.join(versions)}, strict")

    # 1. Every manifest file. A kustomize patch is a partial object (no selector, no image...):
    # it is checked as part of the build that applies it (2.), where its fields are merged.
    kdirs = sorted(p.parent for p in root.rglob("kustomization.yaml"))
    patches = {f for kdir in kdirs for f in kustomization_files(kdir, patches_only=True)}
    manifests = sorted(p for p in root.rglob("*.yaml") if p.name != "kustomization.yaml")
    for p in manifests:
        if p.resolve() in patches:
            continue
        docs = load_docs(p)
        rep.check(f"schema {p.relative_to(root)} ({len(docs)} objects)",
                  object_problems(docs, versions) or ([] if docs else ["no objects"]))

    # 2. What operators apply: the kustomize builds.
    used = set()
    built = {}
    for kdir in kdirs:
        name = kdir.relative_to(root)
        used |= kustomization_files(kdir)
        try:
            docs = kustomize(a.kubectl, kdir)
        except RuntimeError as e:
            rep.check(f"kustomize build {name}", [str(e)])
            continue
        built[str(name)] = docs
        rep.check(f"kustomize build {name} ({len(docs)} objects)",
                  object_problems(docs, versions) + reference_problems(docs))
    orphans = [str(p.relative_to(root)) for p in manifests
               if p.resolve() not in used and str(p.relative_to(root)) not in EXAMPLES_NOT_APPLIED]
    rep.check("every manifest is applied by a kustomization",
              [f"{o} is in no kustomization" for o in orphans])

    # 3. router.toml, as each build has it.
    for bname, docs in built.items():
        for cm, text in router_tomls(docs).items():
            rep.check(f"router.toml of {bname} {cm}", router_toml_problems(text))
    base = tomllib.loads(next(iter(router_tomls(built.get("base", [])).values()), ""))
    sec = tomllib.loads(next(iter(router_tomls(built.get("secure", [])).values()), ""))
    diff = sorted(k for k in set(base) | set(sec) if base.get(k) != sec.get(k))
    rep.check("secure/ changes only `secure` of router.toml, to true",
              [] if diff == ["secure"] and sec.get("secure") is True
              else [f"keys that differ: {diff}"])

    # 3b. The shell scripts of the containers (sh -ec), as /bin/sh (dash) runs them.
    for bname, docs in built.items():
        for where, script in shell_scripts(docs):
            rep.check(f"shellcheck {bname} {where}", shellcheck_problems(script))

    # 4. Chaining beside Flannel.
    fdir = root / "chaining" / "flannel"
    flannel = load_docs(fdir / "kube-flannel-cfg.yaml")[0]["data"]
    network = json.loads(flannel["net-conf.json"])["Network"]
    prefixes = base.get("prefixes", [])
    v4 = [p for p in prefixes if ipaddress.ip_network(p).version == 4]
    rep.check("Flannel net-conf.json Network equals Slim's IPv4 prefixes",
              [] if v4 == [network] else [f"Network {network} but prefixes {prefixes}"])
    conflist = (fdir / "10-flannel.conflist").read_text()
    rep.check("10-flannel.conflist follows the CNI spec", conflist_problems(conflist))
    rep.check("10-flannel.conflist is the ConfigMap's cni-conf.json",
              [] if json.loads(conflist) == json.loads(flannel["cni-conf.json"])
              else ["they differ"])
    plugin = cni_plugin_problems(conflist)
    rep.check("the portmap CNI plugin supports the conflist's cniVersion", plugin if plugin is not None
              else ["no portmap plugin in /usr/lib/cni or /opt/cni/bin: run scripts/install-deps.sh"])

    # 5. containerd's runtime handler, named as the RuntimeClass.
    handlers = [d["handler"] for d in built.get("base", []) if d.get("kind") == "RuntimeClass"]
    rep.check("RuntimeClass slim with handler slim", [] if handlers == ["slim"]
              else [f"handlers: {handlers}"])
    for f, plugin_id in (("slim-runtime-v2.toml", "io.containerd.grpc.v1.cri"),
                         ("slim-runtime-v3.toml", "io.containerd.cri.v1.runtime")):
        rep.check(f"containerd/{f}",
                  containerd_problems(root / "containerd" / f, plugin_id, handlers))

    # 6. slim-k8s-peers' fixture is made of real Node objects.
    fixture = a.repo / "k8s" / "tests" / "fixtures" / "nodelist.json"
    nodes = json.loads(fixture.read_text())["items"]
    rep.check(f"k8s/tests/fixtures/nodelist.json: {len(nodes)} v1 Nodes",
              object_problems(nodes, versions))

    # 6b. The router works with the capabilities the DaemonSet gives it.
    if a.router_caps:
        rep.check("slim-router works with the base DaemonSet's capabilities",
                  router_caps_problems(built.get("base", []), a.router_caps))
    else:
        print("note --router-caps not given: the routers are not run with the DaemonSet's "
              "capabilities (make k8s-validate does it)")

    # 7. The checks above can fail: broken copies must be refused.
    ds = next(d for d in load_docs(root / "base" / "daemonset.yaml") if d["kind"] == "DaemonSet")
    negatives = []
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["hostNetwrk"] = bad["spec"]["template"]["spec"].pop("hostNetwork")
    negatives.append(("a DaemonSet with the misspelt field hostNetwrk", bad, "'hostNetwrk' was unexpected"))
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] = "20s"
    negatives.append(("a DaemonSet with periodSeconds: \"20s\" (a string)", bad, "is not of type 'integer'"))
    bad = copy.deepcopy(ds)
    bad["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = [1]
    negatives.append(("a DaemonSet with maxUnavailable: [1] (a list)", bad, "maxUnavailable"))
    bad = copy.deepcopy(ds)
    bad["kind"] = "DaemonSett"
    negatives.append(("an object of the unknown kind DaemonSett", bad, "no schema"))
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["volumes"] = [
        v for v in bad["spec"]["template"]["spec"]["volumes"] if v["name"] != "socket-dir"]
    negatives.append(("a DaemonSet mounting a volume it lacks", bad, "'socket-dir', which the pod does not define"))
    with tempfile.TemporaryDirectory() as tmp:
        for what, doc, expect in negatives:
            # Through a file, as the manifests are read.
            path = Path(tmp) / "bad.yaml"
            path.write_text(yaml.safe_dump(doc))
            problems = object_problems(load_docs(path), versions)
            found = [p for p in problems if expect in p]
            rep.check(f"negative: {what} is refused",
                      [] if found else [f"expected a failure with {expect!r}, got {problems}"])
    with tempfile.TemporaryDirectory() as tmp:
        # A typo in a patch reaches the build (strategic merge keeps unknown fields), and fails.
        for d in ("base", "secure"):
            subprocess.run(["cp", "-r", str(root / d), tmp], check=True)
        patch = Path(tmp) / "secure" / "daemonset-secure.yaml"
        patch.write_text(patch.read_text().replace("privileged: true", "priviledged: true", 1))
        problems = object_problems(kustomize(a.kubectl, Path(tmp) / "secure"), versions)
        rep.check("negative: secure/ with the patch field `priviledged` is refused",
                  [] if any("'priviledged' was unexpected" in p for p in problems)
                  else [f"expected 'priviledged' was unexpected, got {problems}"])
    bad_toml = router_tomls(built["base"])["ConfigMap/slim-router-config"] + 'prefix = "10.0.0.0/8"\n'
    rep.check("negative: router.toml with the unknown key `prefix` is refused",
              [] if any("'prefix'" in p for p in router_toml_problems(bad_toml))
              else ["accepted"])

    print(f"k8s-validate: {rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
