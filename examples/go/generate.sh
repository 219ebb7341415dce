#!/usr/bin/env bash
# generate.sh [OUT_DIR]: the Go stubs of proto/imgw/v1 (the contract only) with Debian's protoc,
# protoc-gen-go and protoc-gen-go-grpc, as the module imgw.example/gen/go that the contract's
# go_package names (go.mod's `replace` points at ./gen, the default OUT_DIR). The status details
# are google.golang.org/genproto/googleapis/rpc/errdetails: nothing is generated from
# proto/internal.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
out=${1:-$here/gen}
module=imgw.example/gen/go
for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || {
    echo "generate.sh: $tool is missing: apt-get install protobuf-compiler protoc-gen-go" \
      "protoc-gen-go-grpc (.ci/deps installs them)" >&2
    exit 1
  }
done
rm -rf "$out/imgw" "$out/go.mod"
mkdir -p "$out"
timeout 60 protoc -I "$src/proto" \
  --go_out="$out" --go_opt=module="$module" \
  --go-grpc_out="$out" --go-grpc_opt=module="$module" \
  "$src/proto/imgw/v1/msg_read.proto"
printf 'module %s\n\ngo 1.19\n\nrequire (\n\tgoogle.golang.org/grpc v1.33.3\n\tgoogle.golang.org/protobuf v1.28.1\n)\n' \
  "$module" >"$out/go.mod"
