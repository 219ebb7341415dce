#!/usr/bin/env python3
"""Writes deploy/kubernetes/base/prometheusrule.yaml: the groups of imgw-rules.yaml (this
directory) as a PrometheusRule for the Prometheus Operator. Run it after editing imgw-rules.yaml;
tests/deploy/check_deploy.py (manifests) fails while the two differ.

  deploy/prometheus/to-prometheusrule.py        (from anywhere; needs python3-yaml)
"""

import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, "imgw-rules.yaml")
OUT = os.path.join(HERE, "..", "kubernetes", "base", "prometheusrule.yaml")

HEADER = """\
# GENERATED from deploy/prometheus/imgw-rules.yaml by deploy/prometheus/to-prometheusrule.py: edit
# that file and run the script; tests/deploy/check_deploy.py fails while the two differ.
# The imgw alerts for the Prometheus Operator (its CRDs, like podmonitor.yaml). Your Prometheus
# resource's ruleSelector must match the labels below (kube-prometheus-stack wants
# release: <its release name> unless ruleSelectorNilUsesHelmValues is false). The overlays
# replace the placeholder base URL of every runbook_url with theirs (runbook_base_url).
"""


class Dumper(yaml.SafeDumper):
    pass


def str_presenter(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


Dumper.add_representer(str, str_presenter)


def render(rules_path=RULES):
    with open(rules_path, encoding="utf-8") as f:
        groups = yaml.safe_load(f)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "imgw", "labels": {"app.kubernetes.io/name": "imgw"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)


def main():
    text = render()
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print("wrote %s" % os.path.relpath(OUT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
