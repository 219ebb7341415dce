// A Go client of imgw: SetMsgRead and BatchSetMsgRead, the status details (ErrorInfo,
// RetryInfo, BadRequest) and trailers read, retry-after honoured. The Go twin of
// examples/python/imgw_client.py: the same tour, checks and flags, but the refused calls of the
// burst retry concurrently, so that a client that did not wait as told would fail the check.
//
// Stubs: generated from proto/imgw/v1 only (generate.sh), into the package the contract's
// go_package names (imgw.example/gen/go/imgw/v1). Details: the googleapis messages from
// google.golang.org/genproto/googleapis/rpc/errdetails, which grpc-go's status package
// decodes from grpc-status-details-bin.
//
//	imgw-go-client --target 127.0.0.1:50051 [--missing ghost]
//
// Runs a short tour and exits 0 when every answer is what the gateway promises.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	imgwv1 "imgw.example/gen/go/imgw/v1"
)

// callError is a failed call: its status (details included) and its trailing metadata.
type callError struct {
	status   *status.Status
	trailers metadata.MD
}

func (e *callError) Error() string {
	return fmt.Sprintf("%s: %s", e.status.Code(), e.status.Message())
}

// asCallError wraps a call's error with the trailers grpc.Trailer collected; nil stays nil.
func asCallError(err error, trailers metadata.MD) *callError {
	if err == nil {
		return nil
	}
	return &callError{status: status.Convert(err), trailers: trailers}
}

// trailer is the first value of a trailing metadata key, or "".
func (e *callError) trailer(key string) string {
	if v := e.trailers.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// errorInfo, retryInfo and badRequest are the first detail of their type the refusal's
// google.rpc.Status carries, or nil.
func (e *callError) errorInfo() *errdetails.ErrorInfo {
	for _, d := range e.status.Details() {
		if v, ok := d.(*errdetails.ErrorInfo); ok {
			return v
		}
	}
	return nil
}

func (e *callError) retryInfo() *errdetails.RetryInfo {
	for _, d := range e.status.Details() {
		if v, ok := d.(*errdetails.RetryInfo); ok {
			return v
		}
	}
	return nil
}

func (e *callError) badRequest() *errdetails.BadRequest {
	for _, d := range e.status.Details() {
		if v, ok := d.(*errdetails.BadRequest); ok {
			return v
		}
	}
	return nil
}

// retryAfter is how long the gateway said to wait before a retry: RetryInfo, else the
// imgw-retry-after-ms trailer. ok is false when it said nothing.
func (e *callError) retryAfter() (wait time.Duration, ok bool) {
	if r := e.retryInfo(); r != nil && r.GetRetryDelay() != nil {
		return r.GetRetryDelay().AsDuration(), true
	}
	if ms, err := strconv.ParseInt(e.trailer("imgw-retry-after-ms"), 10, 64); err == nil {
		return time.Duration(ms) * time.Millisecond, true
	}
	return 0, false
}

type client struct {
	stub imgwv1.MsgReadServiceClient
}

// setMsgRead calls SetMsgRead, retried (marking read is idempotent and monotonic): after the
// gateway's retry-after on RESOURCE_EXHAUSTED and UNAVAILABLE, and after a doubling backoff on
// DEADLINE_EXCEEDED (a call admitted in time whose answer came too late carries no hint). when
// 0 leaves msg_read_time absent. Each attempt has its own timeout.
func (c *client) setMsgRead(report, peer string, when int64, timeout time.Duration,
	attempts int) (*imgwv1.SetMsgReadResponse, *callError) {
	request := &imgwv1.SetMsgReadRequest{ReportAccount: report, PeerAccount: peer}
	if when != 0 {
		request.MsgReadTime = proto.Int64(when)
	}
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		answer, failure := c.once(request, timeout)
		if failure == nil {
			return answer, nil
		}
		if attempt == attempts {
			return nil, failure
		}
		code := failure.status.Code()
		if code == codes.DeadlineExceeded {
			time.Sleep(backoff)
			if backoff *= 2; backoff > 5*time.Second {
				backoff = 5 * time.Second
			}
			continue
		}
		wait, hinted := failure.retryAfter()
		if (code != codes.ResourceExhausted && code != codes.Unavailable) || !hinted {
			return nil, failure
		}
		time.Sleep(wait)
	}
}

// once is one SetMsgRead call, with its trailers kept on failure.
func (c *client) once(request *imgwv1.SetMsgReadRequest,
	timeout time.Duration) (*imgwv1.SetMsgReadResponse, *callError) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "imgw-caller", "go-example")
	var trailers metadata.MD
	answer, err := c.stub.SetMsgRead(ctx, request, grpc.Trailer(&trailers))
	return answer, asCallError(err, trailers)
}

func main() {
	target := flag.String("target", "", "the gateway's gRPC address, host:port (required)")
	missing := flag.String("missing", "ghost", "an account the upstream does not have")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "--target is required")
		os.Exit(2)
	}
	os.Exit(run(*target, *missing))
}

func run(target, missing string) int {
	var failures []string
	check := func(ok bool, what string) {
		if ok {
			fmt.Println("ok: " + what)
		} else {
			fmt.Println("FAIL: " + what)
			failures = append(failures, what)
		}
	}

	// grpc.WithInsecure: Debian 12's grpc-go (1.33) predates credentials/insecure.
	// grpc.WithNoProxy: like the Python client's grpc.enable_http_proxy=0.
	conn, err := grpc.Dial(target, grpc.WithInsecure(), grpc.WithNoProxy())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	c := &client{stub: imgwv1.NewMsgReadServiceClient(conn)}

	answer, failure := c.setMsgRead("go_alice", "go_bob", 1700000000, 5*time.Second, 10)
	if failure != nil {
		fmt.Printf("  SetMsgRead: %v\n", failure)
	}
	check(answer.GetActionStatus() == "OK", "SetMsgRead OK: "+answer.GetActionStatus())

	batch, err := func() (*imgwv1.BatchSetMsgReadResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.stub.BatchSetMsgRead(ctx, &imgwv1.BatchSetMsgReadRequest{Items: []*imgwv1.SetMsgReadRequest{
			{ReportAccount: "go_carol", PeerAccount: "go_dave"},
			{ReportAccount: "go_carol", PeerAccount: "x.y"},
		}})
	}()
	if err != nil {
		fmt.Printf("  BatchSetMsgRead: %v\n", err)
	}
	results := batch.GetResults()
	check(len(results) == 2 && results[0].GetCode() == int32(codes.OK),
		"BatchSetMsgRead: first item OK")
	check(len(results) == 2 && results[1].GetCode() == int32(codes.InvalidArgument),
		fmt.Sprintf("BatchSetMsgRead: second item INVALID_ARGUMENT: %s",
			func() string {
				if len(results) == 2 {
					return results[1].GetMessage()
				}
				return ""
			}()))

	if _, failure := c.setMsgRead("go_alice", "john.doe", 0, 5*time.Second, 10); failure == nil {
		check(false, "an account outside [A-Za-z0-9_-] was accepted")
	} else {
		bad := failure.badRequest()
		field := ""
		if len(bad.GetFieldViolations()) > 0 {
			field = bad.GetFieldViolations()[0].GetField()
		}
		check(failure.status.Code() == codes.InvalidArgument && field == "peer_account",
			fmt.Sprintf("INVALID_ARGUMENT with BadRequest on %q", field))
	}

	if _, failure := c.setMsgRead("go_alice", missing, 0, 5*time.Second, 10); failure == nil {
		check(false, "a missing account answered OK")
	} else {
		info := failure.errorInfo()
		code := failure.trailer("imgw-error-code")
		check(failure.status.Code() == codes.NotFound && info != nil && code != "" &&
			info.GetMetadata()["error_code"] == code,
			fmt.Sprintf("NOT_FOUND with ErrorInfo %s and imgw-error-code %s",
				info.GetReason(), code))
	}

	// A burst past the gateway's pace: refusals say when to come back, and every call lands
	// once the client honours that. A call the gateway admitted may still end in
	// DEADLINE_EXCEEDED when its answer comes too late (a slow machine): no refusal, no hint,
	// retried after a backoff.
	const burst = 30
	refusals := make([]*callError, burst)
	var wg sync.WaitGroup
	for i := 0; i < burst; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			request := &imgwv1.SetMsgReadRequest{
				ReportAccount: fmt.Sprintf("go_burst%d", i), PeerAccount: "go_peer"}
			_, refusals[i] = c.once(request, time.Second)
		}(i)
	}
	wg.Wait()
	var late []int
	refused, hinted, unexpected := 0, 0, 0
	byCode := map[codes.Code]int{}
	for i, refusal := range refusals {
		if refusal == nil {
			continue
		}
		late = append(late, i)
		code := refusal.status.Code()
		byCode[code]++
		switch code {
		case codes.ResourceExhausted, codes.Unavailable:
			refused++
			if wait, ok := refusal.retryAfter(); ok && wait > 0 {
				hinted++
			}
		case codes.DeadlineExceeded:
		default:
			unexpected++
		}
	}
	check(refused > 0 && hinted == refused,
		fmt.Sprintf("%d of %d burst calls refused, %d with a retry-after (not OK: %v)",
			refused, burst, hinted, byCode))
	check(unexpected == 0,
		fmt.Sprintf("burst calls end OK, refused or past their deadline: %v", byCode))
	// The refused calls retry together, as a burst would: without honouring retry-after they
	// would spend their attempts within milliseconds, refused again each time.
	failed := make([]*callError, burst)
	for _, i := range late {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, failed[i] = c.setMsgRead(fmt.Sprintf("go_burst%d", i), "go_peer", 0, time.Second, 30)
		}(i)
	}
	wg.Wait()
	landed := 0
	for _, i := range late {
		if failed[i] == nil {
			landed++
		} else {
			fmt.Printf("  go_burst%d: %v\n", i, failed[i])
		}
	}
	check(landed == len(late),
		fmt.Sprintf("%d of %d burst calls not OK landed after honouring retry-after",
			landed, len(late)))

	fmt.Printf("%d failure(s)\n", len(failures))
	if len(failures) > 0 {
		return 1
	}
	return 0
}
