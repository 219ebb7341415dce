#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

// Hostile gRPC peers of the gateway, for tests and for measuring by hand (tests/tools/
// imgw_attack.cc): a compression bomb, streams whose reader never opens its flow-control
// window, "rapid reset" and tens of thousands of concurrent calls. Every
// attack reaches loopback addresses only (127.0.0.0/8, ::1, localhost; anything else is
// INVALID_ARGUMENT), in plaintext (h2c, as the gateway listens in the tests), and is bounded in
// count and in time. The HTTP/2 attacks speak through Debian's libnghttp2 (a correct framing,
// HPACK and flow-control layer) or, for rapid reset, raw frames; ManyCalls is a real gRPC C++
// client.
//
// Every function blocks the calling thread until the attack is over and shares nothing with
// other calls: several may run at once from different threads.
namespace imgw::testing::attacks {

// Where one HTTP/2 stream ended, as the attacking client saw it.
enum class StreamEnd {
  kPending,  // Nothing final when the attack stopped looking.
  kAnswer,   // HEADERS with END_STREAM: trailers, or a trailers-only answer.
  kReset,    // RST_STREAM from the server (or refused by its GOAWAY's last stream id).
  kClosed,   // The connection ended (EOF, error) before the stream did.
};

// What came back on one stream.
struct StreamOutcome {
  uint32_t stream_id = 0;
  StreamEnd end = StreamEnd::kPending;
  bool request_sent = false;       // The request's last byte (END_STREAM) was written.
  int http_status = 0;             // :status of the first HEADERS, 0 when none came.
  std::optional<int> grpc_status;  // grpc-status of the trailers (or trailers-only answer).
  std::string grpc_message;        // grpc-message, percent-decoded.
  bool trailers_only = false;      // grpc-status came in the first and only HEADERS.
  uint32_t rst_error_code = 0;     // With kReset: RST_STREAM's (or GOAWAY's) error code.
  size_t data_bytes = 0;           // Response DATA payload received.
  // From the request's first byte queued to the end; absl::InfiniteDuration() while pending.
  absl::Duration latency = absl::InfiniteDuration();
};

// A one-line description of an outcome, e.g. "grpc-status 8 (trailers-only) \"...\"".
std::string Describe(const StreamOutcome& outcome);

// A gzip stream (RFC 1952, as zlib's deflateInit2 with windowBits 15 + 16 writes it) of
// `expanded_bytes` zero bytes. Built 1 MiB at a time with full flushes, so that the expanded
// bytes are never held and each further MiB repeats the bytes of the one before (compressed
// once): 1 GiB takes about 1 MiB and a few milliseconds. Cached per size for the process
// (thread-safe).
const std::string& GzipZeros(size_t expanded_bytes);

struct CompressionBombResult {
  size_t expanded_bytes = 0;
  size_t compressed_bytes = 0;  // The gzip payload of each request.
  int connections = 0;          // Opened (a new one after the server closed the last).
  std::vector<StreamOutcome> streams;
  absl::Duration elapsed;
};

// `repeats` POSTs of /imgw.v1.MsgReadService/SetMsgRead, one after the other (each waits for
// its answer, at most until `timeout` from the start), each carrying one gRPC message with the
// compressed flag set whose payload is GzipZeros(expanded_bytes), with grpc-encoding: gzip.
// Returns what came back per stream; an error only when no connection could be made.
absl::StatusOr<CompressionBombResult> CompressionBomb(const std::string& address,
                                                      size_t expanded_bytes, int repeats,
                                                      absl::Duration timeout);

struct UnreadStreamsResult {
  int connections = 0;
  int streams = 0;         // Requests submitted (connections x streams_per_connection).
  int requests_sent = 0;   // Of those, written to the end (the server's window let them).
  int refused_stream = 0;  // RST_STREAM REFUSED_STREAM (or above a GOAWAY's last stream id).
  int reset_other = 0;     // RST_STREAM with another code.
  std::map<uint32_t, int> resets;  // Every reset (and GOAWAY refusal): error code -> count.
  int answered = 0;                // Trailers came (with a window of 0: trailers-only answers).
  std::map<int, int> grpc_status;  // Of the answered, count per grpc-status.
  int pending = 0;                 // Nothing final when the hold ended.
  int pending_with_headers = 0;    // Of those, the response headers came.
  int closed = 0;                  // The connection ended under them.
  int goaways = 0;                 // GOAWAY frames received.
  // Latency of the answered and refused streams (kAnswer and kReset), sorted.
  std::vector<absl::Duration> answer_latencies;
  absl::Duration elapsed;
};

// Opens `connections` HTTP/2 connections, each announcing SETTINGS_INITIAL_WINDOW_SIZE = 0 and
// never sending WINDOW_UPDATE (so the server cannot send one byte of DATA), and on each opens
// `streams_per_connection` streams carrying one complete BatchSetMsgRead of `items_per_batch`
// valid items (distinct pairs, imgw-caller "attacker"), ignoring the server's
// SETTINGS_MAX_CONCURRENT_STREAMS as a hostile peer would. Keeps reading (HEADERS, RST_STREAM,
// PING and SETTINGS are not flow-controlled) until `hold` from the start, or until the server
// has closed every connection, then closes and counts.
absl::StatusOr<UnreadStreamsResult> UnreadStreams(const std::string& address, int connections,
                                                  int streams_per_connection, int items_per_batch,
                                                  absl::Duration hold);

struct RapidResetResult {
  int64_t streams = 0;  // HEADERS + DATA + RST_STREAM written.
  int connections = 0;  // Opened (a new one after each GOAWAY or close).
  int goaways = 0;      // GOAWAY frames received.
  uint32_t last_goaway_error = 0;
  int64_t frames_received = 0;
  std::map<int, int64_t> frames_by_type;  // HTTP/2 frame type -> count.
  int64_t bytes_received = 0;
  bool timed_out = false;  // `timeout` came before `iterations`.
  absl::Duration elapsed;
};

// "Rapid reset": on one raw HTTP/2 connection, `iterations` times HEADERS + DATA (a valid
// SetMsgRead, without END_STREAM) + RST_STREAM(CANCEL), each on a new stream id, as fast as
// the connection takes them, while reading and discarding what the server sends (SETTINGS and
// PING are acknowledged, the connection window honoured) so the connection never stalls.
// When the server closes the connection (GOAWAY, EOF), opens a new one, at most 100 times.
// Stops after `iterations` or `timeout`.
absl::StatusOr<RapidResetResult> RapidReset(const std::string& address, int64_t iterations,
                                            absl::Duration timeout);

struct ManyCallsResult {
  int calls = 0;
  std::map<int, int> codes;  // grpc::StatusCode -> count.
  // From each call's start to its answer, per code, sorted.
  std::map<int, std::vector<absl::Duration>> latencies;
  absl::Duration started_in;  // Time to start them all.
  absl::Duration elapsed;     // From the first start to the last answer.
};

// `calls` SetMsgRead calls (distinct pairs, imgw-caller "attacker", each with `deadline`) all
// started at once through the gRPC C++ asynchronous API over `channels` channels of their own
// (own TCP connections), and collected. Every call ends by its deadline, so this returns
// within about `deadline` plus the time to start them.
ManyCallsResult ManyCalls(const std::string& address, int calls, absl::Duration deadline,
                          int channels = 4);

// The `q` quantile (0..1) of sorted `values`; zero when empty.
absl::Duration Quantile(const std::vector<absl::Duration>& values, double q);

// Every figure of a result, for people: a summary line, then indented detail lines (per stream,
// per code, latencies). Ends with a newline.
std::string Describe(const CompressionBombResult& result);
std::string Describe(const UnreadStreamsResult& result);
std::string Describe(const RapidResetResult& result);
std::string Describe(const ManyCallsResult& result);

}  // namespace imgw::testing::attacks
