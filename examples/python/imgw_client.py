#!/usr/bin/env python3
"""A Python client of imgw: SetMsgRead and BatchSetMsgRead, the status details (ErrorInfo,
RetryInfo, BadRequest) and trailers read, retry-after honoured.

Stubs: generate proto/imgw/v1 only (generate.sh). Details: the googleapis messages
google.rpc.Status, ErrorInfo, RetryInfo and BadRequest, from the googleapis-common-protos
package (`from google.rpc import status_pb2, error_details_pb2`); generate.sh makes the same
modules from googleapis' files where that package is not installed (Debian 12 has none).

  imgw_client.py --target 127.0.0.1:50051 [--missing ghost]
                 [--metrics http://127.0.0.1:9464/metrics]

With --metrics it also checks the README's retry policy in a real channel: a burst past the
gateway's --max_queued (run it with a small one, e.g. 4 at --rate_limit=5) all succeeds.

Runs a short tour and exits 0 when every answer is what the gateway promises.
"""
import argparse
import concurrent.futures
import sys
import time
import urllib.request

import grpc
from google.rpc import error_details_pb2, status_pb2

from imgw.v1 import msg_read_pb2, msg_read_pb2_grpc


def details_of(error):
    """The google.rpc.Status a refusal carries in grpc-status-details-bin, or None."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


def detail(status, message_type):
    """The first detail of `message_type` in a google.rpc.Status, or None."""
    for any_message in status.details if status else ():
        if any_message.Is(message_type.DESCRIPTOR):
            out = message_type()
            any_message.Unpack(out)
            return out
    return None


def trailer(error, key):
    for k, v in error.trailing_metadata() or ():
        if k == key:
            return v
    return None


def retry_after_seconds(error):
    """When the gateway said a retry may fare better: RetryInfo, else the trailer."""
    retry = detail(details_of(error), error_details_pb2.RetryInfo)
    if retry is not None:
        return retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    ms = trailer(error, "imgw-retry-after-ms")
    return int(ms) / 1000 if ms else None


def set_msg_read(stub, report, peer, when=None, timeout=5.0, attempts=10):
    """SetMsgRead, retried (marking read is idempotent and monotonic): after the gateway's
    retry-after on RESOURCE_EXHAUSTED and UNAVAILABLE, and after a doubling backoff on
    DEADLINE_EXCEEDED (a call admitted in time whose answer came too late carries no hint)."""
    request = msg_read_pb2.SetMsgReadRequest(report_account=report, peer_account=peer)
    if when is not None:
        request.msg_read_time = when
    backoff = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return stub.SetMsgRead(request, timeout=timeout, metadata=[("imgw-caller", "py-example")])
        except grpc.RpcError as error:
            if attempt == attempts:
                raise
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            wait = retry_after_seconds(error)
            retryable = error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                         grpc.StatusCode.UNAVAILABLE)
            if not retryable or wait is None:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


# The retry policy the README documents ("Status mapping"), word for word: gRPC itself retries
# a refused call after the gateway's grpc-retry-pushback-ms, within the call's deadline.
RETRY_SERVICE_CONFIG = """{"methodConfig": [{
  "name": [{"service": "imgw.v1.MsgReadService"}],
  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.2s", "maxBackoff": "5s",
                  "backoffMultiplier": 2,
                  "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}}]}"""


def metric_sum(metrics_url, name, label_filter=""):
    """The sum of a counter's series on the gateway's /metrics whose labels hold label_filter."""
    total = 0.0
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + "{") and label_filter in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--missing", default="ghost", help="an account the upstream does not have")
    ap.add_argument("--metrics", help="the gateway's /metrics URL: also checks the retry policy")
    ap.add_argument("--policy_burst", type=int, default=8,
                    help="calls sent at once through the retry policy (past --max_queued)")
    a = ap.parse_args()
    failures = []

    def check(ok, what):
        print(("ok: " if ok else "FAIL: ") + what)
        if not ok:
            failures.append(what)

    with grpc.insecure_channel(a.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = msg_read_pb2_grpc.MsgReadServiceStub(channel)

        answer = set_msg_read(stub, "py_alice", "py_bob", 1700000000)
        check(answer.action_status == "OK", "SetMsgRead OK: %s" % answer.action_status)

        batch = stub.BatchSetMsgRead(msg_read_pb2.BatchSetMsgReadRequest(items=[
            msg_read_pb2.SetMsgReadRequest(report_account="py_carol", peer_account="py_dave"),
            msg_read_pb2.SetMsgReadRequest(report_account="py_carol", peer_account="x.y"),
        ]), timeout=5)
        check(len(batch.results) == 2 and batch.results[0].code == 0,
              "BatchSetMsgRead: first item OK")
        check(batch.results[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0],
              "BatchSetMsgRead: second item INVALID_ARGUMENT: %s" % batch.results[1].message)

        try:
            set_msg_read(stub, "py_alice", "john.doe")
            check(False, "an account outside [A-Za-z0-9_-] was accepted")
        except grpc.RpcError as error:
            bad = detail(details_of(error), error_details_pb2.BadRequest)
            check(error.code() == grpc.StatusCode.INVALID_ARGUMENT and bad is not None and
                  bad.field_violations[0].field == "peer_account",
                  "INVALID_ARGUMENT with BadRequest on %s" % (
                      bad.field_violations[0].field if bad else None))

        try:
            set_msg_read(stub, "py_alice", a.missing)
            check(False, "a missing account answered OK")
        except grpc.RpcError as error:
            info = detail(details_of(error), error_details_pb2.ErrorInfo)
            check(error.code() == grpc.StatusCode.NOT_FOUND and info is not None and
                  info.metadata["error_code"] == trailer(error, "imgw-error-code"),
                  "NOT_FOUND with ErrorInfo %s and imgw-error-code %s" % (
                      info.reason if info else None, trailer(error, "imgw-error-code")))

        # A burst past the gateway's pace: refusals say when to come back, and every call
        # lands once the client honours that. A call the gateway admitted may still end in
        # DEADLINE_EXCEEDED when its answer comes too late (a slow machine): no refusal, no
        # hint, retried after a backoff.
        futures = []
        refused = []
        late = []
        codes = {}
        for i in range(30):
            request = msg_read_pb2.SetMsgReadRequest(report_account="py_burst%d" % i,
                                                     peer_account="py_peer")
            futures.append((i, stub.SetMsgRead.future(request, timeout=1.0)))
        for i, future in futures:
            try:
                future.result()
            except grpc.RpcError as error:
                codes[error.code().name] = codes.get(error.code().name, 0) + 1
                if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.UNAVAILABLE):
                    refused.append(retry_after_seconds(error))
                late.append(i)
        check(refused and all(r is not None and r > 0 for r in refused),
              "%d of 30 burst calls refused, each with a retry-after (not OK: %s)" % (
                  len(refused), codes))
        check(set(codes) <= {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"},
              "burst calls end OK, refused or past their deadline: %s" % codes)
        # The refused calls retry together, as a burst would: without honouring retry-after
        # they would spend their attempts within milliseconds, refused again each time.
        def retry(i):
            try:
                set_msg_read(stub, "py_burst%d" % i, "py_peer", timeout=1.0, attempts=30)
                return True
            except grpc.RpcError as error:
                print("  py_burst%d: %s: %s" % (i, error.code(), error.details()))
                return False
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(late))) as pool:
            landed = sum(pool.map(retry, late))
        check(landed == len(late),
              "%d of %d burst calls not OK landed after honouring retry-after" % (
                  landed, len(late)))

    # The documented retry policy in a real gRPC channel: a burst past --max_queued is refused
    # in part (the gateway counts the refusals), and every call still succeeds, the refused
    # attempts retried by gRPC after grpc-retry-pushback-ms.
    if a.metrics:
        refused_before = metric_sum(a.metrics, "imgw_rejected_calls_total", 'reason="queue_full"')
        options = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 1),
                   ("grpc.service_config", RETRY_SERVICE_CONFIG)]
        with grpc.insecure_channel(a.target, options=options) as channel:
            stub = msg_read_pb2_grpc.MsgReadServiceStub(channel)
            futures = [stub.SetMsgRead.future(
                msg_read_pb2.SetMsgReadRequest(report_account="py_policy%d" % i,
                                               peer_account="py_peer"), timeout=20.0)
                for i in range(a.policy_burst)]
            failed = []
            for future in futures:
                try:
                    future.result()
                except grpc.RpcError as error:
                    failed.append("%s: %s" % (error.code().name, error.details()))
        refused = metric_sum(a.metrics, "imgw_rejected_calls_total",
                             'reason="queue_full"') - refused_before
        check(refused > 0 and not failed,
              "retry policy: %d of %d calls OK, %d attempts refused and retried by gRPC %s" % (
                  a.policy_burst - len(failed), a.policy_burst, refused, failed[:3]))

    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
