#!/usr/bin/env python3
"""Checks of deploy/: manifests, alert rules, scrape config and the Grafana dashboard.

  check_deploy.py SOURCE_DIR parse
  check_deploy.py SOURCE_DIR manifests [--kubectl=PATH]
  check_deploy.py SOURCE_DIR rules --promtool=PATH
  check_deploy.py SOURCE_DIR promql --prometheus=PATH

parse:     every YAML file under deploy/ parses (all its documents), the dashboard JSON too;
           every alert has a runbook_url, the placeholder base plus the anchor of a heading of
           deploy/kubernetes/README.md; the memory and queue-volume rules refuse synthetic
           faulty containers.
manifests: the promises of deploy/kubernetes (native sidecar, probes, securityContext, resources,
           grace period, secret, loopback gRPC, the queue's writable volume, PodMonitor,
           kustomizations), on the files themselves and, when kubectl is at hand, on
           `kubectl kustomize` of the base and overlays;
           the base's PrometheusRule holds the groups of deploy/prometheus/imgw-rules.yaml, and
           each overlay's rendering points every runbook_url at its runbook_base_url.
rules:     `promtool check rules` on the alert rules, `promtool test rules` on
           tests/deploy/imgw-rules-test.yaml, `promtool check config` on the scrape example.
promql:    a real Prometheus on loopback accepts every PromQL expression of the dashboard and the
           rules (POST /api/v1/query), Grafana variables replaced by literals.

Exits 0 when all is well; otherwise prints one line per problem and exits 1.
"""

import argparse
import contextlib
import io
import json
import os
import posixpath
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import yaml
except ImportError:
    print("check_deploy: the Python module yaml is missing: install the Debian package python3-yaml "
          "(.ci/deps does)", file=sys.stderr)
    sys.exit(1)

PROBLEMS = []


def problem(msg):
    PROBLEMS.append(msg)
    print("FAIL: " + msg)


def rel(root, path):
    return os.path.relpath(path, root)


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def yaml_files(root):
    out = []
    for base in ("deploy",):
        for dirpath, _, files in os.walk(os.path.join(root, base)):
            for name in files:
                if name.endswith((".yaml", ".yml")):
                    out.append(os.path.join(dirpath, name))
    return sorted(out)


def dashboard_path(root):
    return os.path.join(root, "deploy", "grafana", "imgw-dashboard.json")


def rules_path(root):
    return os.path.join(root, "deploy", "prometheus", "imgw-rules.yaml")


# The base URL of every runbook_url in imgw-rules.yaml (and the base's PrometheusRule); the
# overlays replace it with their runbook_base_url.
RUNBOOK_PLACEHOLDER = "https://github.com/example/imgw/blob/main/deploy/kubernetes/README.md"


def runbook_path(root):
    return os.path.join(root, "deploy", "kubernetes", "README.md")


def heading_anchors(path):
    """The anchors GitHub gives the headings of a Markdown file: lower case, punctuation other
    than - and _ dropped, spaces as -, a repeated one suffixed -1, -2, ..."""
    anchors, seen, fence = set(), {}, False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                fence = not fence
            m = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else "%s-%d" % (slug, n))
    return anchors


def alert_rules(groups):
    return [r for g in groups or [] for r in g.get("rules", []) or [] if r.get("alert")]


def check_runbook_urls(where, groups, base, anchors):
    """Every alert of groups has runbook_url == base#<its name in lower case>, an anchor of the
    runbook; none keeps the old repository-path annotation `runbook`."""
    alerts = alert_rules(groups)
    if not alerts:
        problem("%s: no alert" % where)
    for r in alerts:
        name = r["alert"]
        ann = r.get("annotations") or {}
        url = ann.get("runbook_url")
        want = "%s#%s" % (base, name.lower())
        if "runbook" in ann:
            problem("%s: alert %s still has the annotation runbook; runbook_url replaced it" % (where, name))
        if url is None:
            problem("%s: alert %s has no runbook_url" % (where, name))
        elif url != want:
            problem("%s: alert %s: runbook_url is %s, expected %s" % (where, name, url, want))
        elif name.lower() not in anchors:
            problem("%s: alert %s: runbook_url's anchor #%s is no heading of "
                    "deploy/kubernetes/README.md (add a section \"### %s\" under \"Alerts\")"
                    % (where, name, name.lower(), name))
    return len(alerts)


# ---------------------------------------------------------------------------------------------
# parse


def check_parse(root):
    files = yaml_files(root)
    if not files:
        problem("no YAML file under deploy/")
    for path in files:
        try:
            docs = load_yaml_docs(path)
        except yaml.YAMLError as e:
            problem("%s does not parse: %s" % (rel(root, path), e))
            continue
        if not docs:
            problem("%s holds no document" % rel(root, path))
        print("ok: %s (%d document%s)" % (rel(root, path), len(docs), "" if len(docs) == 1 else "s"))
    for dirpath, _, names in os.walk(os.path.join(root, "deploy", "grafana")):
        for name in sorted(names):
            if name.endswith(".json"):
                path = os.path.join(dirpath, name)
                try:
                    with open(path, encoding="utf-8") as f:
                        json.load(f)
                    print("ok: %s" % rel(root, path))
                except ValueError as e:
                    problem("%s does not parse: %s" % (rel(root, path), e))
    if not os.path.exists(dashboard_path(root)):
        problem("missing %s" % rel(root, dashboard_path(root)))
    # runbook_url of every alert: the placeholder base and an anchor of the runbook.
    anchors = heading_anchors(runbook_path(root))
    groups = load_yaml_docs(rules_path(root))[0].get("groups")
    n = check_runbook_urls(rel(root, rules_path(root)), groups, RUNBOOK_PLACEHOLDER, anchors)
    print("ok: %d alerts, each with runbook_url %s#<anchor of a runbook section>" % (n, RUNBOOK_PLACEHOLDER))


# ---------------------------------------------------------------------------------------------
# manifests


def parse_duration(text):
    """Abseil/Go duration ("25s", "1m30s", "500ms") to seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([0-9.]+)(ms|us|ns|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("not a duration: %r" % text)
    return sum(float(n) * units[u] for n, u in parts)


def flag_lines(text):
    """The --name=value lines of an Abseil flagfile (comments and blank lines skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^--([A-Za-z0-9_]+)(?:=(.*))?$", line)
        if not m:
            raise ValueError("not a flag line: %r" % line)
        out.append((m.group(1), m.group(2) if m.group(2) is not None else "true"))
    return out


def effective_flags(argv, files):
    """Flags as imgw-gateway sees them: argv in order, a --flagfile expanded in place (Abseil
    processes a flagfile's lines right where it appears), the last value of a flag kept.
    files: path -> text (the mounted ConfigMap's keys). Returns (flags, problems)."""
    flags, errs = {}, []

    def walk(items, depth):
        if depth > 5:
            errs.append("flagfiles nest too deep")
            return
        for name, value in items:
            if name == "flagfile":
                for path in value.split(","):
                    if path not in files:
                        errs.append("--flagfile=%s is not a key of the mounted ConfigMap" % path)
                        continue
                    try:
                        walk(flag_lines(files[path]), depth + 1)
                    except ValueError as e:
                        errs.append("%s: %s" % (path, e))
            else:
                flags[name] = value

    items = []
    for a in argv:
        m = re.match(r"^--([A-Za-z0-9_]+)(?:=(.*))?$", a)
        if not m:
            errs.append("argument %r is not a --flag" % a)
            continue
        items.append((m.group(1), m.group(2) if m.group(2) is not None else "true"))
    walk(items, 0)
    return flags, errs


# The image's ENTRYPOINT (Dockerfile): flags that come before the container's args.
IMAGE_ENTRYPOINT_FLAGS = ["--grpc_listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464"]
# The image's WORKDIR (Dockerfile): the working directory when the manifest sets no workingDir,
# where the queue's default --queue_path=imgw-queue.db lands.
IMAGE_WORKDIR = "/var/lib/imgw"


def read_kustomization(kdir):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = os.path.join(kdir, name)
        if os.path.exists(path):
            docs = load_yaml_docs(path)
            return path, (docs[0] if docs else {})
    return None, None


def mini_kustomize_check(root, kdir, seen, objects, configmaps):
    """Every file a kustomization names exists; bases are kustomizations too. Collects the
    objects of resource files and the configMapGenerator contents (name -> {key: text})."""
    kdir = os.path.normpath(kdir)
    if kdir in seen:
        return
    seen.add(kdir)
    kpath, k = read_kustomization(kdir)
    if kpath is None:
        problem("%s: no kustomization.yaml" % rel(root, kdir))
        return
    print("ok: %s" % rel(root, kpath))
    if not isinstance(k, dict):
        problem("%s is not a mapping" % rel(root, kpath))
        return
    for entry in k.get("resources", []) or []:
        target = os.path.normpath(os.path.join(kdir, entry))
        if os.path.isdir(target):
            mini_kustomize_check(root, target, seen, objects, configmaps)
        elif os.path.isfile(target):
            for d in load_yaml_docs(target):
                objects.append((rel(root, target), d))
        elif re.match(r"^[a-z]+://|^github\.com/", entry):
            problem("%s: remote resource %s (not checkable offline)" % (rel(root, kpath), entry))
        else:
            problem("%s lists resource %s, which does not exist" % (rel(root, kpath), entry))
    for gen_kind in ("configMapGenerator", "secretGenerator"):
        for gen in k.get(gen_kind, []) or []:
            data = configmaps.setdefault(gen.get("name"), {}) if gen_kind == "configMapGenerator" else {}
            for f in gen.get("files", []) or []:
                key, _, path = f.rpartition("=")
                target = os.path.join(kdir, path)
                if not os.path.isfile(target):
                    problem("%s: %s file %s does not exist" % (rel(root, kpath), gen_kind, path))
                    continue
                with open(target, encoding="utf-8") as fh:
                    data[key or os.path.basename(path)] = fh.read()
            for f in gen.get("envs", []) or []:
                if not os.path.isfile(os.path.join(kdir, f)):
                    problem("%s: %s env file %s does not exist" % (rel(root, kpath), gen_kind, f))
    for key in ("patches", "patchesStrategicMerge", "patchesJson6902", "components", "crds",
                "configurations"):
        for entry in k.get(key, []) or []:
            path = entry.get("path") if isinstance(entry, dict) else entry
            if path is None:
                if isinstance(entry, dict) and "patch" not in entry:
                    problem("%s: a %s entry has neither path nor patch" % (rel(root, kpath), key))
                continue
            if "\n" in path:  # an inline patch under patchesStrategicMerge
                continue
            target = os.path.join(kdir, path)
            if not os.path.exists(target):
                problem("%s lists %s %s, which does not exist" % (rel(root, kpath), key, path))
            elif key == "components":
                mini_kustomize_check(root, target, seen, [], {})
            elif os.path.isfile(target):
                load_yaml_docs(target)


def find_objects(objects, kind):
    return [(src, d) for src, d in objects if isinstance(d, dict) and d.get("kind") == kind]


def check_workload(where, objects, configmaps):
    """The promises of the imgw sidecar in the Deployment(s) among objects. configmaps: name ->
    {key: text} for the ConfigMaps the pod mounts (generated or plain)."""
    deployments = find_objects(objects, "Deployment")
    if not deployments:
        problem("%s: no Deployment" % where)
        return
    for _, d in find_objects(objects, "ConfigMap"):
        configmaps.setdefault(d["metadata"]["name"], {}).update(d.get("data") or {})
    secrets = {d["metadata"]["name"] for _, d in find_objects(objects, "Secret")}
    found_sidecar = False
    for src, dep in deployments:
        name = "%s: Deployment %s" % (where, dep.get("metadata", {}).get("name"))
        tmpl = dep.get("spec", {}).get("template", {})
        pod = tmpl.get("spec", {})
        pod_labels = tmpl.get("metadata", {}).get("labels", {}) or {}
        annotations = tmpl.get("metadata", {}).get("annotations", {}) or {}
        selector = dep.get("spec", {}).get("selector", {}).get("matchLabels", {}) or {}
        for k, v in selector.items():
            if pod_labels.get(k) != v:
                problem("%s: selector %s=%s does not match the pod labels" % (name, k, v))
        imgw = [c for c in pod.get("initContainers", []) or [] if c.get("name") == "imgw"]
        if [c for c in pod.get("containers", []) or [] if c.get("name") == "imgw"]:
            problem("%s: imgw is a regular container; it must be a native sidecar "
                    "(initContainers with restartPolicy: Always)" % name)
        if not imgw:
            problem("%s: no init container named imgw" % name)
            continue
        found_sidecar = True
        c = imgw[0]
        if c.get("restartPolicy") != "Always":
            problem("%s: the imgw init container needs restartPolicy: Always (native sidecar)" % name)
        if not c.get("image"):
            problem("%s: imgw has no image" % name)
        if "command" in c:
            problem("%s: imgw overrides command; the checks assume the image's ENTRYPOINT" % name)

        # Ports and probes.
        ports = c.get("ports", []) or []
        metrics = [p for p in ports if p.get("containerPort") == 9464]
        if len(metrics) != 1 or not metrics[0].get("name"):
            problem("%s: imgw must declare containerPort 9464 once, with a name" % name)
            metrics_port = {"name": None, "containerPort": 9464}
        else:
            metrics_port = metrics[0]
        if any(p.get("containerPort") == 50051 for p in ports):
            problem("%s: imgw declares the gRPC port 50051; it listens on loopback only" % name)
        if len(metrics_port.get("name") or "") > 15:
            problem("%s: port name %s is longer than 15 characters" % (name, metrics_port["name"]))

        def probe(kind, path):
            p = c.get(kind)
            if not p:
                problem("%s: imgw has no %s" % (name, kind))
                return
            g = p.get("httpGet")
            if not g:
                problem("%s: imgw %s is not an httpGet" % (name, kind))
                return
            if g.get("path") != path:
                problem("%s: imgw %s checks %s, not %s" % (name, kind, g.get("path"), path))
            if g.get("port") not in (metrics_port.get("name"), metrics_port.get("containerPort")):
                problem("%s: imgw %s port %s is not the metrics port" % (name, kind, g.get("port")))
            if g.get("scheme", "HTTP") != "HTTP":
                problem("%s: imgw %s scheme must be HTTP" % (name, kind))

        probe("livenessProbe", "/healthz")
        probe("readinessProbe", "/readyz")
        sp = c.get("startupProbe")
        if not sp:
            problem("%s: imgw has no startupProbe" % name)
        else:
            g = sp.get("httpGet") or {}
            if g.get("path") not in ("/healthz", "/readyz"):
                problem("%s: imgw startupProbe checks %s" % (name, g.get("path")))
            if g.get("port") not in (metrics_port.get("name"), metrics_port.get("containerPort")):
                problem("%s: imgw startupProbe port %s is not the metrics port" % (name, g.get("port")))

        # Resources.
        res = c.get("resources", {}) or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if not (res.get(kind) or {}).get(r):
                    problem("%s: imgw resources.%s.%s is not set" % (name, kind, r))

        # securityContext: the container's, else the pod's (Kubernetes applies the pod's then).
        sc = c.get("securityContext", {}) or {}
        psc = pod.get("securityContext", {}) or {}

        def sec(key):
            return sc[key] if key in sc else psc.get(key)

        if sec("runAsNonRoot") is not True:
            problem("%s: imgw securityContext.runAsNonRoot must be true" % name)
        if sec("runAsUser") != 65532:
            problem("%s: imgw securityContext.runAsUser must be 65532 (the image's user)" % name)
        if sc.get("readOnlyRootFilesystem") is not True:
            problem("%s: imgw securityContext.readOnlyRootFilesystem must be true" % name)
        if sc.get("allowPrivilegeEscalation") is not False:
            problem("%s: imgw securityContext.allowPrivilegeEscalation must be false" % name)
        if sc.get("privileged"):
            problem("%s: imgw must not be privileged" % name)
        caps = sc.get("capabilities", {}) or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            problem("%s: imgw securityContext.capabilities must drop ALL and add none" % name)
        if (sec("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problem("%s: imgw securityContext.seccompProfile.type must be RuntimeDefault" % name)

        # Volumes: the flagfile ConfigMap and the secret key.
        volumes = {v.get("name"): v for v in pod.get("volumes", []) or []}
        mounts = c.get("volumeMounts", []) or []
        files = {}
        secret_files = {}
        for m in mounts:
            v = volumes.get(m.get("name"))
            if v is None:
                problem("%s: imgw mounts volume %s, which the pod does not define" % (name, m.get("name")))
                continue
            mpath = m.get("mountPath", "").rstrip("/")
            if "configMap" in v:
                cm_name = v["configMap"].get("name")
                cm = configmaps.get(cm_name)
                if cm is None:
                    problem("%s: ConfigMap %s (volume %s) is not defined" % (name, cm_name, v["name"]))
                    continue
                keys = {i["key"]: i["path"] for i in v["configMap"].get("items", []) or []} or \
                    {k: k for k in cm}
                sub = m.get("subPath")
                for k, p in keys.items():
                    if k not in cm:
                        problem("%s: ConfigMap %s has no key %s" % (name, cm_name, k))
                        continue
                    if sub:
                        if sub == p:
                            files[mpath] = cm[k]
                    else:
                        files[mpath + "/" + p] = cm[k]
            if "secret" in v:
                if m.get("readOnly") is not True:
                    problem("%s: the secret volume %s must be mounted readOnly" % (name, v["name"]))
                if m.get("subPath"):
                    # The kubelet never updates a subPath mount: a rotated key would not reach
                    # imgw's reload (README "Rotating the key and the Redis password").
                    problem("%s: the secret volume %s is mounted with subPath, which is never "
                            "updated when the Secret changes" % (name, v["name"]))
                sname = v["secret"].get("secretName")
                for i in v["secret"].get("items", []) or [{"key": "secret_key", "path": "secret_key"}]:
                    secret_files[mpath + "/" + i["path"]] = (sname, i["key"])
                mode = v["secret"].get("defaultMode")
                if mode is not None and mode & 0o007:
                    problem("%s: the secret volume %s is readable by others (mode %o)" % (name, v["name"], mode))
        args = c.get("args", []) or []
        if any(a.startswith("--secret_key=") for a in args):
            problem("%s: imgw has the secret key on its command line" % name)
        for e in c.get("env", []) or []:
            if e.get("name") == "IMGW_SECRET_KEY":
                problem("%s: imgw takes the secret key from the environment; mount it as a file" % name)
        flags, errs = effective_flags(IMAGE_ENTRYPOINT_FLAGS + args, files)
        for e in errs:
            problem("%s: %s" % (name, e))
        grpc = flags.get("grpc_listen", "127.0.0.1:50051")
        if not re.match(r"^(127\.0\.0\.1|\[::1\]|localhost):50051$", grpc):
            problem("%s: imgw's effective --grpc_listen is %s; a sidecar keeps gRPC on 127.0.0.1:50051" % (name, grpc))
        mlisten = flags.get("metrics_listen", "127.0.0.1:9464")
        if mlisten not in ("0.0.0.0:9464", "[::]:9464", ":9464"):
            problem("%s: --metrics_listen is %s; the kubelet and Prometheus need 0.0.0.0:9464" % (name, mlisten))
        for f in ("region", "sdkappid", "identifier"):
            if not flags.get(f) and not (f == "region" and flags.get("endpoint")):
                problem("%s: the flagfile sets no --%s" % (name, f))
        key_file = flags.get("secret_key_file")
        if not key_file:
            problem("%s: the flagfile sets no --secret_key_file" % name)
        elif key_file not in secret_files:
            problem("%s: --secret_key_file=%s is not a file of a mounted Secret" % (name, key_file))
        elif secrets and secret_files[key_file][0] not in secrets and where.endswith("base"):
            problem("%s: Secret %s is not part of the base" % (name, secret_files[key_file][0]))
        try:
            grace = parse_duration(flags.get("shutdown_grace", "25s"))
        except ValueError as e:
            problem("%s: --shutdown_grace: %s" % (name, e))
            grace = 25
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        if not tgps > grace:
            problem("%s: terminationGracePeriodSeconds %s must exceed --shutdown_grace (%gs)" % (name, tgps, grace))
        check_redis_flags(name, dep, c, flags, secret_files)
        check_memory(name, c, flags)
        check_queue_volume(name, pod, c, flags)
        sdk_label = pod_labels.get("imgw-sdkappid")
        if sdk_label is not None and sdk_label != flags.get("sdkappid"):
            problem("%s: pod label imgw-sdkappid=%s differs from --sdkappid=%s" % (name, sdk_label, flags.get("sdkappid")))

        # Scrape annotations for plain Prometheus.
        if annotations.get("prometheus.io/scrape") != "true":
            problem("%s: pod annotation prometheus.io/scrape must be \"true\"" % name)
        if annotations.get("prometheus.io/port") != str(metrics_port.get("containerPort")):
            problem("%s: pod annotation prometheus.io/port must be \"9464\"" % name)
        if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
            problem("%s: pod annotation prometheus.io/path must be /metrics" % name)

        # PodMonitors select these pods and name the port.
        monitors = find_objects(objects, "PodMonitor")
        if not monitors:
            problem("%s: no PodMonitor" % where)
        for _, pm in monitors:
            if pm.get("apiVersion") != "monitoring.coreos.com/v1":
                problem("%s: PodMonitor apiVersion must be monitoring.coreos.com/v1" % where)
            spec = pm.get("spec", {})
            sel = spec.get("selector", {}) or {}
            for k, v in (sel.get("matchLabels") or {}).items():
                if pod_labels.get(k) != v:
                    problem("%s: PodMonitor selects %s=%s, which the pods of %s do not carry" % (where, k, v, name))
            if sel.get("matchExpressions"):
                problem("%s: PodMonitor matchExpressions are not checked; use matchLabels" % where)
            if not sel.get("matchLabels"):
                problem("%s: the PodMonitor selects no labels" % where)
            eps = spec.get("podMetricsEndpoints", []) or []
            if not any(e.get("port") == metrics_port.get("name") and e.get("path", "/metrics") == "/metrics" for e in eps):
                problem("%s: PodMonitor has no endpoint on port %s path /metrics" % (where, metrics_port.get("name")))
            for label in spec.get("podTargetLabels", []) or []:
                if label not in pod_labels:
                    problem("%s: PodMonitor podTargetLabels names %s, not a pod label" % (where, label))
        print("ok: %s: imgw sidecar (grpc_listen=%s, shutdown_grace=%s < %ss, secret %s)" % (
            name, grpc, flags.get("shutdown_grace"), tgps, key_file))
    if not found_sidecar:
        problem("%s: no Deployment with the imgw sidecar" % where)


# The gateway's memory budget (README "Limits and abuse"): it keeps its RSS under --memory_limit,
# whose default (auto) is the container's cgroup limit, i.e. resources.limits.memory; it refuses
# a limit under 64 MiB (kMinMemoryLimit in lib/config/gateway_config.h).
MIN_MEMORY_LIMIT = 64 << 20
# The calls it holds may take 40% of the budget (lib/overload/memory_budget.h), each about
# 17.7 KiB of RSS (measured, README "Limits and abuse"), so --max_queued past what that holds
# would never be reached: the memory budget would refuse first.
CALLS_SHARE = 0.4
RSS_PER_HELD_CALL = int(17.7 * 1024)
# Idle, the gateway's RSS is about 27 MiB (README "Limits and abuse"): a request under 32Mi would
# let the scheduler pack pods on memory the sidecar uses from the start.
MIN_MEMORY_REQUEST = 32 << 20
MAX_QUEUED_DEFAULT = 10000


def calls_held_within(budget):
    """The calls a memory budget of `budget` bytes holds at once."""
    return int(CALLS_SHARE * budget) // RSS_PER_HELD_CALL

_QUANTITY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def parse_quantity(text):
    """A Kubernetes memory quantity ("128Mi", "1G", "134217728") in bytes."""
    m = re.match(r"^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T|)$", str(text))
    if not m:
        raise ValueError("not a memory quantity: %r" % text)
    return int(m.group(1)) * _QUANTITY[m.group(2)]


def parse_size_flag(text):
    """imgw's size flags (config::ParseBytes): Ki/Mi/Gi binary, K/M/G decimal, optional B."""
    m = re.match(r"^([0-9]+)(KiB|MiB|GiB|Ki|Mi|Gi|KB|MB|GB|K|M|G|B|)$", text)
    if not m:
        raise ValueError("not a size: %r" % text)
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "Ki": 1 << 10, "Mi": 1 << 20,
             "Gi": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "K": 10**3, "M": 10**6,
             "G": 10**9, "B": 1, "": 1}
    return int(m.group(1)) * units[m.group(2)]


def check_memory(name, c, flags):
    """The container's memory limit is the budget the gateway enforces (or holds a smaller
    --memory_limit), and leaves the gateway room to run."""
    problems_before = len(PROBLEMS)
    res = c.get("resources", {}) or {}
    try:
        limit = parse_quantity((res.get("limits") or {}).get("memory"))
        request = parse_quantity((res.get("requests") or {}).get("memory", "0"))
    except ValueError as e:
        problem("%s: imgw resources: %s" % (name, e))
        return
    if request > limit:
        problem("%s: imgw requests.memory exceeds limits.memory" % name)
    value = flags.get("memory_limit", "auto")
    if value == "auto":
        budget = limit
    else:
        try:
            budget = parse_size_flag(value)
        except ValueError as e:
            problem("%s: --memory_limit: %s" % (name, e))
            return
        if budget > limit:
            problem("%s: --memory_limit=%s is above the container's limits.memory (%d bytes): the "
                    "kernel would kill the gateway before it refuses a call" % (name, value, limit))
    if budget < MIN_MEMORY_LIMIT:
        problem("%s: the gateway's memory budget (%d bytes, %s) is under the 64Mi it needs; it "
                "would exit 2" % (name, budget, "limits.memory" if value == "auto" else "--memory_limit"))
    if request < MIN_MEMORY_REQUEST:
        problem("%s: imgw requests.memory (%d MiB) is under its idle RSS and margin (%d MiB)" % (
            name, request >> 20, MIN_MEMORY_REQUEST >> 20))
    held = calls_held_within(budget)
    try:
        max_queued = int(flags.get("max_queued", str(MAX_QUEUED_DEFAULT)))
    except ValueError:
        problem("%s: --max_queued=%s is not a number" % (name, flags.get("max_queued")))
        return
    if max_queued > held:
        problem("%s: --max_queued=%d is more calls than the memory budget (%d MiB) holds, about %d "
                "(40%% of it at 17.7 KiB a call): lower --max_queued or raise limits.memory" % (
                    name, max_queued, budget >> 20, held))
    if len(PROBLEMS) > problems_before:
        return
    print("ok: %s: memory budget %d MiB (%s) within limits.memory %d MiB; --max_queued=%d within "
          "the %d calls it holds; requests.memory %d MiB" % (
              name, budget >> 20, "auto" if value == "auto" else "--memory_limit", limit >> 20,
              max_queued, held, request >> 20))


def check_memory_rules():
    """The memory rules above refuse what they must: synthetic containers, one fault each."""
    def container(limit, request="32Mi"):
        return {"resources": {"limits": {"memory": limit}, "requests": {"memory": request}}}
    cases = [
        ("consistent", container("128Mi"), {"max_queued": "2900"}, 0),
        ("default --max_queued at 128Mi", container("128Mi"), {}, 1),
        ("--max_queued one past", container("128Mi"),
         {"max_queued": str(calls_held_within(128 << 20) + 1)}, 1),
        ("raised limit holds the default", container("512Mi"), {}, 0),
        ("--memory_limit above the limit", container("128Mi"),
         {"memory_limit": "256Mi", "max_queued": "100"}, 1),
        ("budget under 64Mi", container("48Mi"), {"max_queued": "100"}, 1),
        ("request under the idle RSS", container("128Mi", "16Mi"), {"max_queued": "100"}, 1),
    ]
    for what, c, flags, want in cases:
        before = len(PROBLEMS)
        with contextlib.redirect_stdout(io.StringIO()):
            check_memory("selftest " + what, c, flags)
        got = len(PROBLEMS) - before
        del PROBLEMS[before:]
        if got != want:
            problem("memory rules: %s: %d problems, want %d" % (what, got, want))
    print("ok: the memory rules refuse each of %d faulty containers and pass the others" % sum(
        1 for case in cases if case[3]))


# Volume sources the kubelet always mounts read-only: the queue's file cannot live on them.
READ_ONLY_VOLUME_SOURCES = ("configMap", "secret", "projected", "downwardAPI", "image")


def check_queue_volume(name, pod, c, flags):
    """The durable queue (README "The queue"): unless --queue_backend=none, the directory of its
    SQLite file (--queue_path, relative to the working directory: the container's workingDir,
    else the image's WORKDIR) is a volume mounted writable into the imgw container. The root
    filesystem is read-only (readOnlyRootFilesystem, checked above, must stay true), so anywhere
    else the gateway cannot create the file and exits 2. An emptyDir needs a sizeLimit (the file
    grows with the backlog; unbounded, it can fill the node's disk), and since it starts empty
    and the gateway creates no directory, the file must sit at its top."""
    problems_before = len(PROBLEMS)
    backend = flags.get("queue_backend", "sqlite")
    if backend == "none":
        print("ok: %s: --queue_backend=none, no queue file" % name)
        return
    if backend == "redis":
        # The queue in Redis (README "The queue in Redis"): no file; Redis' address is the
        # budget's flag, and a manifest's replicas must share the budget too, or each spends
        # the whole limit on the one queue.
        if not flags.get("redis_address"):
            problem("%s: --queue_backend=redis without --redis_address" % name)
        elif flags.get("ratelimit_backend") != "redis":
            problem("%s: --queue_backend=redis with a local budget: every replica would spend "
                    "the whole limit on the one queue (add --ratelimit_backend=redis)" % name)
        else:
            print("ok: %s: the queue in Redis %s, with the budget" % (name, flags["redis_address"]))
        return
    if backend != "sqlite":
        problem("%s: --queue_backend=%s (sqlite, redis or none)" % (name, backend))
        return
    workdir = c.get("workingDir") or IMAGE_WORKDIR
    queue_path = flags.get("queue_path", "imgw-queue.db")
    if not workdir.startswith("/"):
        problem("%s: imgw's workingDir %r is not an absolute path" % (name, workdir))
        return
    path = posixpath.normpath(posixpath.join(workdir, queue_path))
    directory = posixpath.dirname(path)
    volumes = {v.get("name"): v for v in pod.get("volumes", []) or []}
    best = None
    for m in c.get("volumeMounts", []) or []:
        mp = posixpath.normpath(m.get("mountPath", "") or "/")
        if directory == mp or directory.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, m)
    where = "the queue's file %s (--queue_path=%s, working directory %s%s)" % (
        path, queue_path, workdir, "" if c.get("workingDir") else ", the image's")
    if best is None:
        problem("%s: %s is on no volume, and the root filesystem is read-only: mount a writable "
                "volume (an emptyDir with a sizeLimit) at %s" % (name, where, directory))
        return
    mp, m = best
    v = volumes.get(m.get("name")) or {}
    source = [k for k in v if k != "name"]
    if m.get("readOnly") is True:
        problem("%s: %s is on the volume %s, mounted readOnly" % (name, where, m.get("name")))
    if any(k in READ_ONLY_VOLUME_SOURCES for k in source):
        problem("%s: %s is on the volume %s, a %s, which is always read-only: use an emptyDir or "
                "a persistent volume" % (name, where, m.get("name"), "/".join(source)))
    if "emptyDir" in v:
        empty = v.get("emptyDir") or {}
        if not empty.get("sizeLimit"):
            problem("%s: the queue's emptyDir %s has no sizeLimit; the file grows with the "
                    "backlog (about 170 MB for --queue_max_pending's million entries)"
                    % (name, m.get("name")))
        if directory != mp:
            problem("%s: %s is in %s, below the emptyDir's mount %s: an emptyDir starts empty "
                    "and the gateway creates no directory" % (name, where, directory, mp))
    if len(PROBLEMS) > problems_before:
        return
    print("ok: %s: the queue's file %s on the writable volume %s (%s) mounted at %s" % (
        name, path, m.get("name"), "/".join(source) or "?", mp))


def check_queue_volume_rules():
    """The queue-volume rules above refuse what they must: synthetic pods, one fault each."""
    def case(mount=None, volume=None, working_dir="/var/lib/imgw", read_only=None):
        c = {"name": "imgw", "volumeMounts": []}
        if working_dir:
            c["workingDir"] = working_dir
        pod = {"volumes": []}
        if mount:
            m = {"name": "q", "mountPath": mount}
            if read_only is not None:
                m["readOnly"] = read_only
            c["volumeMounts"].append(m)
            pod["volumes"].append(dict({"name": "q"}, **(volume or {"emptyDir": {"sizeLimit": "1Gi"}})))
        return pod, c

    cases = [
        ("the base: an emptyDir with a sizeLimit at the workingDir", case("/var/lib/imgw"), {}, 0),
        ("no workingDir: the image's, mounted", case("/var/lib/imgw", working_dir=None), {}, 0),
        ("mounted readOnly: false", case("/var/lib/imgw", read_only=False), {}, 0),
        ("an absolute --queue_path on a PVC", case("/data", {"persistentVolumeClaim": {"claimName": "q"}},
                                                   working_dir="/tmp"), {"queue_path": "/data/q.db"}, 0),
        ("--queue_backend=none, no volume", case(), {"queue_backend": "none"}, 0),
        ("the queue in Redis with the budget, no volume", case(),
         {"queue_backend": "redis", "ratelimit_backend": "redis", "redis_address": "r:6379"}, 0),
        ("the queue in Redis without an address", case(), {"queue_backend": "redis"}, 1),
        ("the queue in Redis with a local budget", case(),
         {"queue_backend": "redis", "redis_address": "r:6379"}, 1),
        ("workingDir not mounted", case("/var/lib/other"), {}, 1),
        ("no volume at all", case(), {}, 1),
        ("no workingDir, the image's not mounted", case("/data", working_dir=None), {}, 1),
        ("mounted readOnly", case("/var/lib/imgw", read_only=True), {}, 1),
        ("a configMap at the workingDir", case("/var/lib/imgw", {"configMap": {"name": "x"}}), {}, 1),
        ("an emptyDir without sizeLimit", case("/var/lib/imgw", {"emptyDir": {}}), {}, 1),
        ("a subdirectory of an emptyDir", case("/var/lib/imgw"), {"queue_path": "q/imgw-queue.db"}, 1),
        ("an unknown --queue_backend", case("/var/lib/imgw"), {"queue_backend": "file"}, 1),
    ]
    for what, (pod, c), flags, want in cases:
        before = len(PROBLEMS)
        with contextlib.redirect_stdout(io.StringIO()):
            check_queue_volume("selftest " + what, pod, c, flags)
        got = len(PROBLEMS) - before
        del PROBLEMS[before:]
        if got != want:
            problem("queue volume rules: %s: %d problems, want %d" % (what, got, want))
    print("ok: the queue volume rules refuse each of %d faulty pods and pass the other %d" % (
        sum(1 for case_ in cases if case_[3]), sum(1 for case_ in cases if not case_[3])))


def check_redis_flags(name, dep, c, flags, secret_files):
    """The shared budget (--ratelimit_backend=redis): an address, the password as a file
    of a mounted Secret (never a literal in the environment), and the fallback's N equal to the
    Deployment's replica count when the manifest fixes it."""
    backend = flags.get("ratelimit_backend", "local")
    if backend not in ("local", "redis"):
        problem("%s: --ratelimit_backend=%s (local or redis)" % (name, backend))
    for e in c.get("env", []) or []:
        if e.get("name") == "IMGW_REDIS_PASSWORD" and "value" in e:
            problem("%s: IMGW_REDIS_PASSWORD is a literal in the manifest; mount the Secret "
                    "imgw-redis and use --redis_password_file" % name)
    if backend != "redis":
        if flags.get("redis_address"):
            problem("%s: --redis_address without --ratelimit_backend=redis (imgw refuses to start)" % name)
        return
    address = flags.get("redis_address", "")
    if not re.match(r"^[^\s:]+:[0-9]{1,5}$", address):
        problem("%s: --ratelimit_backend=redis needs --redis_address=host:port, not %r" % (name, address))
    pw = flags.get("redis_password_file")
    if pw and pw not in secret_files:
        problem("%s: --redis_password_file=%s is not a file of a mounted Secret" % (name, pw))
    replicas = dep.get("spec", {}).get("replicas")
    try:
        fallback = int(flags.get("redis_fallback_replicas", "4"))
    except ValueError:
        problem("%s: --redis_fallback_replicas=%s is not a number" % (name, flags.get("redis_fallback_replicas")))
        return
    if replicas is not None and fallback != replicas:
        problem("%s: --redis_fallback_replicas=%d differs from the Deployment's %d replicas (the "
                "fallback's limit/N before Redis has told the live count)" % (name, fallback, replicas))
    print("ok: %s: shared budget in Redis at %s, password %s, fallback N=%d (replicas %s)" % (
        name, address, pw or "none", fallback, replicas))


def check_manifests(root, kubectl):
    kroot = os.path.join(root, "deploy", "kubernetes")
    base = os.path.join(kroot, "base")
    overlays_dir = os.path.join(kroot, "overlays")
    overlays = sorted(os.path.join(overlays_dir, d) for d in os.listdir(overlays_dir)) \
        if os.path.isdir(overlays_dir) else []
    if not overlays:
        problem("no overlay under deploy/kubernetes/overlays")
    if not os.path.exists(os.path.join(kroot, "README.md")):
        problem("deploy/kubernetes/README.md is missing (notes for clusters older than 1.29)")

    # The files themselves: the base as written.
    objects, configmaps = [], {}
    mini_kustomize_check(root, base, set(), objects, configmaps)
    generated = {}
    _, bk = read_kustomization(base)
    for gen in (bk or {}).get("configMapGenerator", []) or []:
        generated[gen["name"]] = configmaps.get(gen["name"], {})
    check_workload("deploy/kubernetes/base", objects, dict(generated))
    for _, s in find_objects(objects, "Secret"):
        print("ok: base Secret %s is a placeholder (see its comment)" % s["metadata"]["name"])
    check_prometheusrule_in_sync(root, objects)
    anchors = heading_anchors(runbook_path(root))

    # Each overlay: references the base, its files exist, its patches keep the promises.
    for ov in overlays:
        kpath, k = read_kustomization(ov)
        if kpath is None:
            problem("%s: no kustomization.yaml" % rel(root, ov))
            continue
        refs = [os.path.normpath(os.path.join(ov, r)) for r in (k.get("resources") or [])]
        if os.path.normpath(base) not in refs:
            problem("%s does not reference the base (../../base)" % rel(root, kpath))
        if not k.get("namespace"):
            problem("%s sets no namespace" % rel(root, kpath))
        if not any(i.get("name") == "imgw" and (i.get("newTag") or i.get("digest")) for i in k.get("images", []) or []):
            problem("%s does not pin the imgw image (images: name: imgw, newTag)" % rel(root, kpath))
        if not k.get("replicas"):
            problem("%s sets no replica count" % rel(root, kpath))
        mini_kustomize_check(root, ov, set(), [], {})
        # The overlay's patches applied by hand to what this check needs: the ConfigMap data.
        ov_cms = {n: dict(v) for n, v in generated.items()}
        for entry in k.get("patches", []) or []:
            docs = []
            if entry.get("path"):
                docs = load_yaml_docs(os.path.join(ov, entry["path"]))
            elif entry.get("patch"):
                docs = [d for d in yaml.safe_load_all(entry["patch"]) if d]
            for d in docs:
                if d.get("kind") == "ConfigMap" and d.get("$patch") != "delete":
                    ov_cms.setdefault(d["metadata"]["name"], {}).update(d.get("data") or {})
        patched = [(s, d) for s, d in objects if d.get("kind") != "Secret"]
        check_workload_overlay(rel(root, ov), patched, ov_cms, k, ov)
        runbook_base_url(root, kpath, k)

    # The real renderer, when available (CI machines may not have it).
    if kubectl:
        for kdir in [base] + overlays:
            r = subprocess.run([kubectl, "kustomize", kdir], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                problem("kubectl kustomize %s failed: %s" % (rel(root, kdir), r.stderr.strip()))
                continue
            docs = [d for d in yaml.safe_load_all(r.stdout) if d]
            print("ok: kubectl kustomize %s: %d objects" % (rel(root, kdir), len(docs)))
            check_workload("kustomize build of %s" % rel(root, kdir), [("build", d) for d in docs], {})
            # The runbook links as rendered: the base keeps the placeholder, an overlay has its own.
            where = "kustomize build of %s" % rel(root, kdir)
            if kdir == base:
                want = RUNBOOK_PLACEHOLDER
            else:
                kpath, k = read_kustomization(kdir)
                want = runbook_base_url(root, kpath, k, quiet=True)
            rules = find_objects([("build", d) for d in docs], "PrometheusRule")
            if len(rules) != 1:
                problem("%s: %d PrometheusRules, expected the one of the base" % (where, len(rules)))
            elif want:
                n = check_runbook_urls(where, rules[0][1].get("spec", {}).get("groups"), want, anchors)
                print("ok: %s: the PrometheusRule's %d runbook_url start with %s#" % (where, n, want))
            if any(d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "imgw-runbook" for d in docs):
                problem("%s outputs the ConfigMap imgw-runbook; it must stay local-config" % where)
    else:
        print("note: kubectl not found; the kustomize builds were checked by the mini check only")


def check_prometheusrule_in_sync(root, objects):
    """The base's PrometheusRule holds exactly the groups of deploy/prometheus/imgw-rules.yaml."""
    rules = find_objects(objects, "PrometheusRule")
    path = os.path.join("deploy", "kubernetes", "base", "prometheusrule.yaml")
    if len(rules) != 1:
        problem("deploy/kubernetes/base: %d PrometheusRules; expected %s, listed in kustomization.yaml"
                % (len(rules), path))
        return
    src, pr = rules[0]
    if pr.get("apiVersion") != "monitoring.coreos.com/v1":
        problem("%s: apiVersion must be monitoring.coreos.com/v1" % src)
    want = load_yaml_docs(rules_path(root))[0].get("groups")
    if (pr.get("spec") or {}).get("groups") != want:
        problem("%s differs from deploy/prometheus/imgw-rules.yaml: run "
                "deploy/prometheus/to-prometheusrule.py" % src)
    else:
        print("ok: %s holds the groups of deploy/prometheus/imgw-rules.yaml" % src)


def runbook_base_url(root, kpath, k, quiet=False):
    """The overlay's runbook_base_url (configMapGenerator imgw-runbook, local-config) and the
    replacement that puts it before the "#" of every runbook_url. Returns the URL, or None."""
    where = rel(root, kpath)
    gens = [g for g in k.get("configMapGenerator", []) or [] if g.get("name") == "imgw-runbook"]
    literals = dict(l.split("=", 1) for g in gens for l in g.get("literals", []) or [] if "=" in l)
    url = literals.get("runbook_base_url")
    if not quiet:
        if not url:
            problem("%s: no configMapGenerator imgw-runbook with a literal runbook_base_url=URL "
                    "(where the alerts' runbook_url point)" % where)
        elif not re.match(r"^https?://[^#\s]+$", url):
            problem("%s: runbook_base_url %r is not an http(s) URL without #" % (where, url))
        elif url == RUNBOOK_PLACEHOLDER:
            problem("%s: runbook_base_url is the rules' placeholder; set your runbook's URL" % where)
        for g in gens:
            ann = (g.get("options") or {}).get("annotations") or {}
            if ann.get("config.kubernetes.io/local-config") != "true":
                problem("%s: the ConfigMap imgw-runbook must be annotated "
                        "config.kubernetes.io/local-config: \"true\" (not applied)" % where)
        ok = False
        for rp in k.get("replacements", []) or []:
            src = rp.get("source") or {}
            if src.get("name") != "imgw-runbook" or src.get("fieldPath") != "data.runbook_base_url":
                continue
            for t in rp.get("targets", []) or []:
                opts = t.get("options") or {}
                if (t.get("select") or {}).get("kind") == "PrometheusRule" and \
                        "spec.groups.*.rules.*.annotations.runbook_url" in (t.get("fieldPaths") or []) and \
                        opts.get("delimiter") == "#" and opts.get("index") == 0:
                    ok = True
        if not ok:
            problem("%s: no replacement of data.runbook_base_url of imgw-runbook into "
                    "spec.groups.*.rules.*.annotations.runbook_url of the PrometheusRule "
                    "(options: delimiter \"#\", index 0)" % where)
        elif url:
            print("ok: %s: runbook_url base %s" % (where, url))
    return url


def check_workload_overlay(where, objects, configmaps, k, ov):
    """The base's Deployment with the overlay's Deployment patches' pod labels merged in (enough
    for the label/flag agreement), checked with the overlay's ConfigMap data."""
    import copy
    objs = copy.deepcopy(objects)
    for entry in k.get("patches", []) or []:
        docs = []
        if entry.get("path"):
            docs = load_yaml_docs(os.path.join(ov, entry["path"]))
        for d in docs:
            if d.get("kind") != "Deployment":
                continue
            labels = d.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
            pspec = d.get("spec", {}).get("template", {}).get("spec", {}) or {}
            for _, dep in objs:
                if dep.get("kind") == "Deployment" and dep["metadata"]["name"] == d["metadata"]["name"]:
                    dep["spec"]["template"]["metadata"].setdefault("labels", {}).update(labels)
                    merge_pod_spec(dep["spec"]["template"].setdefault("spec", {}), pspec)
    # `replicas:` of the kustomization, as kustomize sets spec.replicas.
    for r in k.get("replicas", []) or []:
        for _, dep in objs:
            if dep.get("kind") == "Deployment" and dep["metadata"]["name"] == r.get("name"):
                dep["spec"]["replicas"] = r.get("count")
    check_workload(where, objs, configmaps)


def merge_pod_spec(pod, patch):
    """Enough of a strategic merge for the overlays' pod patches: containers and init containers
    by name, their volumeMounts by mountPath and env by name, volumes by name; other keys replaced."""
    def merge_list(dst, src, key, nested):
        for item in src or []:
            hit = [x for x in dst if x.get(key) == item.get(key)]
            if not hit:
                dst.append(item)
                continue
            for k2, v in item.items():
                if k2 in nested and isinstance(v, list):
                    merge_list(hit[0].setdefault(k2, []), v, *nested[k2])
                else:
                    hit[0][k2] = v
    container_lists = {"volumeMounts": ("mountPath", {}), "env": ("name", {})}
    for k2, v in patch.items():
        if k2 in ("containers", "initContainers"):
            merge_list(pod.setdefault(k2, []), v, "name", container_lists)
        elif k2 == "volumes":
            merge_list(pod.setdefault(k2, []), v, "name", {})
        else:
            pod[k2] = v


# ---------------------------------------------------------------------------------------------
# rules


def run(cmd, timeout=60):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).strip()


def need_tool(path, name):
    if not path or path.endswith("-NOTFOUND") or not os.path.exists(path):
        problem("%s not found: install Debian's package prometheus (.ci/deps does), which has "
                "/usr/bin/%s, and configure again" % (name, name))
        return False
    return True


def check_rules(root, promtool):
    if not need_tool(promtool, "promtool"):
        return
    rules = rules_path(root)
    rc, out = run([promtool, "check", "rules", rules])
    print(out)
    if rc != 0:
        problem("promtool check rules %s failed" % rel(root, rules))
    # Alert logic on synthetic series.
    unit = os.path.join(root, "tests", "deploy", "imgw-rules-test.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        # promtool resolves rule_files relative to the test file: give it an absolute path.
        doc = load_yaml_docs(unit)[0]
        doc["rule_files"] = [rules]
        path = os.path.join(tmp, "imgw-rules-test.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        rc, out = run([promtool, "test", "rules", path])
        print(out)
        if rc != 0:
            problem("promtool test rules tests/deploy/imgw-rules-test.yaml failed")
        # The scrape example. Debian builds Prometheus without Kubernetes service discovery, so the
        # kubernetes_sd_configs are swapped for a static target: the rest (relabeling) is checked.
        example = os.path.join(root, "deploy", "prometheus", "prometheus-scrape-example.yaml")
        conf = load_yaml_docs(example)[0]
        sd = 0
        for sc in conf.get("scrape_configs", []) or []:
            if sc.pop("kubernetes_sd_configs", None) is not None:
                sd += 1
                sc["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
        if not sd:
            problem("%s has no kubernetes_sd_configs" % rel(root, example))
        conf["rule_files"] = [os.path.join(os.path.dirname(example), r) for r in conf.get("rule_files", [])]
        cpath = os.path.join(tmp, "prometheus.yml")
        with open(cpath, "w") as f:
            yaml.safe_dump(conf, f, sort_keys=False)
        rc, out = run([promtool, "check", "config", cpath])
        print(out)
        if rc != 0:
            problem("promtool check config %s (kubernetes_sd_configs made static) failed" % rel(root, example))
        relabel = " ".join(json.dumps(sc.get("relabel_configs", [])) for sc in conf.get("scrape_configs", []))
        for needle in ("prometheus_io_scrape", "prometheus_io_port", "prometheus_io_path"):
            if needle not in relabel:
                problem("%s does not use the pod annotation %s" % (rel(root, example), needle))


# ---------------------------------------------------------------------------------------------
# promql


GRAFANA_VARS = [
    (r"\$__rate_interval|\$\{__rate_interval\}", "1m"),
    (r"\$__interval_ms|\$\{__interval_ms\}", "60000"),
    (r"\$__interval|\$\{__interval\}", "1m"),
    (r"\$__range_s|\$\{__range_s\}", "3600"),
    (r"\$__range_ms|\$\{__range_ms\}", "3600000"),
    (r"\$__range|\$\{__range\}", "1h"),
    # Every other variable: a regex that matches all. Not $1: a regex group in label_replace,
    # which Grafana leaves alone (no variable has that name).
    (r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)", ".*"),
]


def substitute(expr):
    for pat, lit in GRAFANA_VARS:
        expr = re.sub(pat, lit, expr)
    return expr


def dashboard_exprs(root):
    with open(dashboard_path(root), encoding="utf-8") as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels or []:
            for t in p.get("targets", []) or []:
                if t.get("expr"):
                    out.append(("dashboard panel %r (refId %s)" % (p.get("title"), t.get("refId")), t["expr"]))
            walk(p.get("panels"))

    walk(dash.get("panels"))
    for v in (dash.get("templating") or {}).get("list", []) or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", q or "")
        if m:
            out.append(("dashboard variable %s" % v.get("name"), m.group(1)))
        elif q and not re.match(r"^\s*(label_names|metrics)\(", q):
            out.append(("dashboard variable %s" % v.get("name"), re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", q)))
    return dash, out


def rules_exprs(root):
    out = []
    for doc in load_yaml_docs(rules_path(root)):
        for g in doc.get("groups", []) or []:
            for r in g.get("rules", []) or []:
                out.append(("rule %s" % (r.get("alert") or r.get("record")), r["expr"]))
    return out


def check_dashboard_shape(dash):
    if not 36 <= int(dash.get("schemaVersion", 0)) <= 39:
        problem("dashboard schemaVersion %s is not around 38" % dash.get("schemaVersion"))
    names = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    if (names.get("datasource") or {}).get("type") != "datasource" or names["datasource"].get("query") != "prometheus":
        problem("dashboard has no Prometheus datasource variable named datasource")
    for v in ("namespace", "pod", "sdkappid"):
        if v not in names:
            problem("dashboard has no %s variable" % v)
    # The SDKAppID variable takes the scrape label imgw_sdkappid, the label the rules group by and
    # every series of the target carries; the panels filter on that same label.
    q = (names.get("sdkappid") or {}).get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if names.get("sdkappid") and not re.match(r"^label_values\(imgw_build_info\{[^}]*\},\s*imgw_sdkappid\)$", q or ""):
        problem("dashboard variable sdkappid must be label_values(imgw_build_info{...}, imgw_sdkappid), not %r" % q)
    if names.get("sdkappid") and names["sdkappid"].get("allValue") != ".*":
        problem("dashboard variable sdkappid needs allValue \".*\" (All matches series without the label)")
    titles, metrics = [], set()

    def walk(panels):
        for p in panels or []:
            titles.append(p.get("title", ""))
            if p.get("type") != "row":
                ds = p.get("datasource") or {}
                if ds.get("uid") not in ("${datasource}", "$datasource"):
                    problem("dashboard panel %r does not use ${datasource}" % p.get("title"))
            for t in p.get("targets", []) or []:
                expr = t.get("expr", "")
                metrics.update(re.findall(r"\b(imgw_[a-z_]+|process_[a-z_]+|container_[a-z_]+|kube_[a-z_]+|up)\b", expr))
                if "$namespace" in expr and not re.search(r'imgw_sdkappid=~"\$sdkappid"', expr):
                    problem("dashboard panel %r (refId %s) is not filtered by the SDKAppID variable "
                            "(imgw_sdkappid=~\"$sdkappid\", or a join on imgw_build_info filtered so)"
                            % (p.get("title"), t.get("refId")))
            all_panels.append(p)
            walk(p.get("panels"))

    all_panels = []
    walk(dash.get("panels"))
    ids = [p.get("id") for p in all_panels]
    if len(ids) != len(set(ids)):
        problem("dashboard panel ids are not unique")
    # Importable as laid out: every panel inside the 24-column grid, no two overlapping (rows
    # collapsed or not, their panels are laid out on the same grid).
    boxes = []
    for p in all_panels:
        g = p.get("gridPos") or {}
        try:
            x, y, w, h = (int(g[k]) for k in ("x", "y", "w", "h"))
        except (KeyError, TypeError, ValueError):
            problem("dashboard panel %r has no complete gridPos" % p.get("title"))
            continue
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > 24:
            problem("dashboard panel %r: gridPos %s is outside the 24-column grid" % (p.get("title"), g))
        for other, (ox, oy, ow, oh) in boxes:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                problem("dashboard panels %r and %r overlap (gridPos)" % (other, p.get("title")))
        boxes.append((p.get("title"), (x, y, w, h)))
    wanted = [
        "imgw_upstream_requests_total", "imgw_rate_limit_max_calls_per_second",
        "imgw_rate_limit_calls_per_second", "imgw_grpc_server_handling_seconds_bucket",
        "imgw_grpc_server_handling_seconds_count", "imgw_upstream_request_duration_seconds_bucket",
        "imgw_upstream_answers_total", "imgw_upstream_failures_total", "imgw_queued_upstream_calls",
        "imgw_calls_in_progress", "imgw_queue_wait_seconds_bucket", "imgw_retries_total",
        "imgw_rejected_calls_total", "imgw_merged_calls_total", "imgw_upstream_connections_open",
        "imgw_upstream_connections_created_total", "imgw_usersig_expiry_seconds",
        "imgw_circuit_breaker_open", "up",
        # The shared budget (--ratelimit_backend=redis), row "Shared budget (Redis)".
        "imgw_shared_budget_active", "imgw_shared_budget_replicas", "imgw_shared_budget_rate",
        "imgw_shared_budget_local_rate", "imgw_shared_budget_fallbacks_total",
        "imgw_redis_errors_total", "imgw_redis_acquire_seconds",
        # Row "Sidecar resources": the process, as imgw exports it, and the secret files.
        "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
        "process_max_fds", "process_start_time_seconds", "imgw_memory_limit_bytes",
        "imgw_secret_file_invalid", "imgw_secret_reloads_total",
        # Row "Queue": the durable queue behind EnqueueSetMsgRead.
        "imgw_queue_pending", "imgw_queue_oldest_pending_seconds", "imgw_queue_in_flight",
        "imgw_queue_dead_letters", "imgw_queue_enqueued_total", "imgw_queue_enqueue_refused_total",
        "imgw_queue_applied_total", "imgw_queue_retries_total", "imgw_queue_dead_letters_total",
        "imgw_queue_store_write_seconds_bucket", "imgw_queue_store_errors_total",
        # The container, from the cluster (cAdvisor, kube-state-metrics; the init-container
        # series for the native sidecar).
        "container_memory_working_set_bytes", "container_cpu_usage_seconds_total",
        "kube_pod_init_container_status_restarts_total", "kube_pod_container_status_restarts_total",
        "kube_pod_init_container_resource_limits", "kube_pod_container_resource_limits",
    ]
    for m in wanted:
        if m not in metrics:
            problem("dashboard shows no panel on %s" % m)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, data=None, timeout=5):
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


class Prometheus:
    """Debian's prometheus on 127.0.0.1, an empty scrape config, a throwaway TSDB."""

    def __init__(self, binary, tmp):
        self.binary, self.tmp, self.proc, self.url = binary, tmp, None, None

    def start(self, ready_within=20.0):
        config = os.path.join(self.tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        for attempt in range(3):
            port = free_port()
            self.url = "http://127.0.0.1:%d" % port
            log = open(os.path.join(self.tmp, "prometheus-%d.log" % attempt), "w")
            self.log_path = log.name
            self.proc = subprocess.Popen(
                [self.binary, "--config.file=" + config,
                 "--storage.tsdb.path=" + os.path.join(self.tmp, "data-%d" % attempt),
                 "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + ready_within
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    status, _ = http(self.url + "/-/ready", timeout=1)
                    if status == 200:
                        return True
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            exited = self.proc.poll() is not None
            self.stop()
            with open(self.log_path) as f:
                tail = f.read()[-2000:]
            if not exited or "address already in use" not in tail:
                problem("prometheus did not become ready within %.0fs on %s:\n%s" % (ready_within, self.url, tail))
                return False
        problem("prometheus could not bind a free port three times")
        return False

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def query(self, expr):
        data = urllib.parse.urlencode({"query": expr, "time": "%.3f" % time.time()}).encode()
        return http(self.url + "/api/v1/query", data=data, timeout=10)


def check_promql(root, prometheus):
    dash, exprs = dashboard_exprs(root)
    check_dashboard_shape(dash)
    exprs += rules_exprs(root)
    if not need_tool(prometheus, "prometheus"):
        return
    tmp = tempfile.mkdtemp(prefix="imgw-deploy-prom-")
    server = Prometheus(prometheus, tmp)
    try:
        if not server.start():
            return
        print("prometheus ready at %s" % server.url)
        for where, raw in exprs:
            expr = substitute(raw)
            if re.search(r"\$(?![0-9])", expr) and not re.search(r"\{\{|\$labels|\$value", expr):
                problem("%s: a Grafana variable is left in %r" % (where, expr))
            status, body = server.query(expr)
            try:
                answer = json.loads(body)
            except ValueError:
                answer = {"status": "error", "error": body[:300]}
            if status == 200 and answer.get("status") == "success":
                print("ok: %s" % where)
            else:
                problem("%s: Prometheus refused the expression (%s %s: %s)\n  %s" % (
                    where, status, answer.get("errorType"), answer.get("error"), expr))
        print("%d expressions checked" % len(exprs))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source_dir")
    ap.add_argument("check", choices=["parse", "manifests", "rules", "promql"])
    ap.add_argument("--promtool", default="")
    ap.add_argument("--prometheus", default="")
    ap.add_argument("--kubectl", default="")
    a = ap.parse_args()
    root = os.path.abspath(a.source_dir)
    if a.check == "parse":
        check_parse(root)
        check_memory_rules()
        check_queue_volume_rules()
    elif a.check == "manifests":
        kubectl = a.kubectl if a.kubectl and not a.kubectl.endswith("-NOTFOUND") else ""
        check_manifests(root, kubectl)
    elif a.check == "rules":
        check_rules(root, a.promtool)
    elif a.check == "promql":
        check_promql(root, a.prometheus)
    if PROBLEMS:
        print("%d problem%s" % (len(PROBLEMS), "" if len(PROBLEMS) == 1 else "s"))
        return 1
    print("all good")
    return 0


if __name__ == "__main__":
    sys.exit(main())
