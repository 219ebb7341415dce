#!/usr/bin/env bash
# build.sh OUT_BINARY: builds the example client offline from Debian 12's packages only (no
# network, no module proxy). go.mod pins the versions Debian ships; their sources live under
# /usr/share/gocode/src, most without a go.mod of their own, so neither the module proxy nor
# `replace` directives can serve them (a replaced directory must hold a go.mod, and grpc's
# go.mod names modules Debian lacks). Vendor mode reads no dependency's go.mod: in a copy of
# this module, vendor/ links each required module to its Debian directory and
# vendor/modules.txt lists go.mod's requirements. Caches go to a temporary directory, so it works
# as root and in a fresh clone. With network access, build the usual way instead:
#   ./generate.sh && go mod tidy && go build -o imgw-go-client .
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
gocode=/usr/share/gocode/src
packages="golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
golang-google-genproto-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev"
missing() {
  echo "build.sh: $1 is missing: apt-get install" $packages "(.ci/deps installs them)" >&2
  exit 1
}
command -v go >/dev/null || missing "the go toolchain"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

mod=$work/module
mkdir -p "$mod/vendor"
cp "$here/go.mod" "$here/main.go" "$mod/"
"$here/generate.sh" "$mod/gen"

export GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local GO111MODULE=on \
  GOCACHE=$work/cache GOPATH=$work/gopath GOENV=off GOWORK=off CGO_ENABLED=0
# "path version" per requirement, replacements (only ./gen) marked as go mod vendor marks them.
timeout 30 go mod edit -json "$mod/go.mod" >"$work/go.mod.json"
python3 - "$work/go.mod.json" >"$work/requires" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["Require"]:
    print(r["Path"], r["Version"])
PY
while read -r path version; do
  mkdir -p "$mod/vendor/$(dirname "$path")"
  if [[ $path == imgw.example/gen/go ]]; then
    ln -s "$mod/gen" "$mod/vendor/$path"
    printf '# %s %s => ./gen\n## explicit; go 1.19\n' "$path" "$version"
  else
    [[ -d $gocode/$path ]] || missing "$gocode/$path ($path $version)"
    ln -s "$gocode/$path" "$mod/vendor/$path"
    printf '# %s %s\n## explicit\n' "$path" "$version"
  fi
done <"$work/requires" >"$mod/vendor/modules.txt"
echo '# imgw.example/gen/go => ./gen' >>"$mod/vendor/modules.txt"

(cd "$mod" && timeout 300 go build -trimpath -o "$work/imgw-go-client" . && timeout 120 go vet .)
mkdir -p "$(dirname "$out")"
mv "$work/imgw-go-client" "$out"
