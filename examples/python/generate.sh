#!/usr/bin/env bash
# [PYTHON=python3] generate.sh OUT_DIR: Python stubs for imgw_client.py with Debian's protoc and
# grpc_python_plugin (protobuf-compiler-grpc): imgw/v1 from proto/ (the contract), and, standing
# in for the googleapis-common-protos package Debian 12 lacks, google.rpc's status and
# error_details modules from googleapis' files as the gateway's build keeps them.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
out=$1
mkdir -p "$out"
protoc -I "$src/proto" --python_out="$out" --grpc_out="$out" \
  --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" "$src/proto/imgw/v1/msg_read.proto"
if ! "${PYTHON:-python3}" -c "import google.rpc.status_pb2" 2>/dev/null; then
  protoc -I "$src/proto/internal" --python_out="$out" \
    "$src/proto/internal/google/rpc/status.proto" "$src/proto/internal/google/rpc/error_details.proto"
fi
