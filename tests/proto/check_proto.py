#!/usr/bin/env python3
"""Checks that what a client generates from proto/ cannot clash with googleapis.

A client generates proto/imgw/v1 only and reads status details with its own googleapis
package. So: nothing under proto/imgw declares or imports a google.* package, and the copies
the gateway builds from (proto/internal/google/rpc) keep googleapis' file names, putting each
message in the file googleapis puts it (a google.rpc.Status declared in error_details.proto made
a Python client fail with '"google.rpc.Status" is already defined in file
"google/rpc/status.proto"'). Usage: check_proto.py SOURCE_DIR. Exit 1 on a problem.
"""
import os
import re
import sys

# googleapis: the file that defines each message of google.rpc the gateway uses.
GOOGLEAPIS_FILE = {
    "Status": "google/rpc/status.proto",
    "RetryInfo": "google/rpc/error_details.proto",
    "ErrorInfo": "google/rpc/error_details.proto",
    "BadRequest": "google/rpc/error_details.proto",
}


def protos(root):
    for d, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith(".proto"):
                yield os.path.join(d, f)


def main():
    src = os.path.abspath(sys.argv[1])
    problems = []
    public = os.path.join(src, "proto", "imgw")
    for path in protos(public):
        text = open(path).read()
        rel = os.path.relpath(path, os.path.join(src, "proto"))
        package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
        if package and package.group(1).startswith("google."):
            problems.append("%s: declares package %s" % (rel, package.group(1)))
        for imported in re.findall(r'^import\s+(?:public\s+)?"([^"]+)"', text, re.M):
            if imported.startswith("google/") and not imported.startswith("google/protobuf/"):
                problems.append("%s: imports %s (not in protobuf's own runtime)" % (rel, imported))
        print("ok: %s" % rel)
    for path in protos(os.path.join(src, "proto")):
        rel = os.path.relpath(path, os.path.join(src, "proto"))
        if not (rel.startswith("imgw/v") or rel.startswith("internal/")):
            problems.append("%s: neither the public contract (imgw/vN/) nor internal/: a client "
                            "generating from proto/ would take it" % rel)
    internal = os.path.join(src, "proto", "internal")
    for path in protos(os.path.join(internal, "google")):
        rel = os.path.relpath(path, internal)
        text = open(path).read()
        # Top-level messages: "message X {" at the start of a line.
        for name in re.findall(r"^message\s+(\w+)\s*\{", text, re.M):
            want = GOOGLEAPIS_FILE.get(name)
            if want is None:
                problems.append("%s: message google.rpc.%s is not one the gateway is known to use"
                                % (rel, name))
            elif want != rel:
                problems.append("%s: declares google.rpc.%s, which googleapis declares in %s"
                                % (rel, name, want))
        print("ok: internal/%s" % rel)
    for p in problems:
        print("FAIL: " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
