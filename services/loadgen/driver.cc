#include "services/loadgen/driver.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/async_unary_call.h"
#include "grpcpp/support/channel_arguments.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "lib/common/grpc_codes.h"

namespace imgw::loadgen {
namespace {

using ::imgw::GrpcCodeName;
constexpr int kCodes = 17;  // grpc::StatusCode 0..16.

int CodeIndex(int code) { return code >= 0 && code < kCodes ? code : 2; /* UNKNOWN */ }

// One RPC in flight: its tag on the completion queue. Owned by the queue's thread from Finish()
// on, deleted there.
struct Call {
  grpc::ClientContext context;
  absl::Time start;  // Open loop: the scheduled time; closed loop: when it was sent.
  grpc::Status status;
  v1::SetMsgReadRequest set_request;
  v1::SetMsgReadResponse set_response;
  v1::BatchSetMsgReadRequest batch_request;
  v1::BatchSetMsgReadResponse batch_response;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::SetMsgReadResponse>> set_reader;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::BatchSetMsgReadResponse>> batch_reader;
  v1::EnqueueSetMsgReadResponse enqueue_response;
  v1::BatchEnqueueSetMsgReadResponse batch_enqueue_response;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::EnqueueSetMsgReadResponse>> enqueue_reader;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::BatchEnqueueSetMsgReadResponse>>
      batch_enqueue_reader;
};

// One completion queue and the thread that drains it. What it counts is its own until the
// thread is joined.
struct Worker {
  grpc::CompletionQueue cq;
  std::thread thread;
  LatencyHistogram latency;
  std::array<int64_t, kCodes> codes{};
  std::array<int64_t, kCodes> item_codes{};
  int64_t answered = 0;
};

class Driver final {
 public:
  explicit Driver(const DriverOptions& options, std::unique_ptr<PairGenerator> pairs)
      : options_(options), pairs_(std::move(pairs)) {}

  absl::Status Connect() {
    for (int i = 0; i < options_.channels; ++i) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      // A distinct argument per channel: channels with equal arguments may share a connection.
      args.SetInt("imgw.loadgen.channel", i);
      channels_.push_back(grpc::CreateCustomChannel(options_.target, options_.credentials, args));
      stubs_.push_back(v1::MsgReadService::NewStub(channels_.back()));
    }
    const auto connect_by = absl::ToChronoTime(absl::Now() + options_.connect_timeout);
    for (auto& channel : channels_) channel->GetState(/*try_to_connect=*/true);
    int connected = 0;
    for (auto& channel : channels_) connected += channel->WaitForConnected(connect_by) ? 1 : 0;
    if (connected == 0) {
      return absl::UnavailableError(absl::StrCat("cannot connect to ", options_.target, " within ",
                                                 absl::FormatDuration(options_.connect_timeout)));
    }
    return absl::OkStatus();
  }

  Report Run() {
    // Set before the threads start, which read stop_.
    t0_ = absl::Now();
    stop_ = t0_ + options_.duration;
    workers_.reserve(static_cast<size_t>(options_.threads));
    for (int i = 0; i < options_.threads; ++i) workers_.push_back(std::make_unique<Worker>());
    for (auto& worker : workers_) {
      Worker* w = worker.get();
      w->thread = std::thread([this, w] { Drain(*w); });
    }
    if (options_.open_loop) {
      OpenLoop();
    } else {
      for (int i = 0; i < options_.concurrency; ++i) {
        Start(*workers_[static_cast<size_t>(i) % workers_.size()], absl::Now());
      }
      absl::SleepFor(stop_ - absl::Now());
    }
    // Every call ends by its deadline (gRPC enforces it on the client); the 2 s are for gRPC.
    // Closed-loop workers start no call after stop_, so once this wait is over (or everything
    // is answered) nothing is started on a queue being shut down.
    const absl::Time give_up = std::max(absl::Now(), stop_) + options_.deadline + absl::Seconds(2);
    while (in_flight_.load() > 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(1));
    for (auto& worker : workers_) worker->cq.Shutdown();
    for (auto& worker : workers_) worker->thread.join();
    return Collect();
  }

 private:
  // Calls due at t0 + i / rate. Each call's latency counts from its due time, not from when it
  // was actually sent: a sender that falls behind (or a server that stalls it) would otherwise
  // hide exactly the waits it caused (coordinated omission).
  void OpenLoop() {
    const double rate = options_.rate;
    const int64_t total =
        static_cast<int64_t>(std::floor(rate * absl::ToDoubleSeconds(options_.duration)));
    int64_t i = 0;
    size_t next_worker = 0;
    for (;;) {
      const absl::Time now = absl::Now();
      // At most kChunk calls between looks at the clock, so that a sender that fell behind
      // still stops at the end.
      constexpr int64_t kChunk = 64;
      const int64_t due = std::min<int64_t>(
          {total, i + kChunk, static_cast<int64_t>(absl::ToDoubleSeconds(now - t0_) * rate) + 1});
      for (; i < due; ++i) {
        if (in_flight_.load(std::memory_order_relaxed) >= options_.max_in_flight) {
          ++not_sent_;
          continue;
        }
        Start(*workers_[next_worker], t0_ + absl::Seconds(static_cast<double>(i) / rate));
        next_worker = (next_worker + 1) % workers_.size();
      }
      // Calls due before the end are sent, late if need be; none after.
      if (i >= total || now >= stop_) break;
      const absl::Time next_due = t0_ + absl::Seconds(static_cast<double>(i) / rate);
      const absl::Duration wait = std::min(next_due - absl::Now(), absl::Milliseconds(1));
      if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
    }
    not_sent_ += total - i;  // Due before the end but never reached: the sender fell behind.
  }

  void Fill(v1::SetMsgReadRequest& item, int64_t item_index) {
    Pair pair;
    {
      absl::MutexLock lock(&pairs_mu_);
      pair = pairs_->Next();
    }
    item.set_report_account(std::move(pair.report_account));
    item.set_peer_account(std::move(pair.peer_account));
    if (options_.send_time) item.set_msg_read_time(kBaseReadTime + item_index % 100000);
  }

  // Starts one call on `worker`'s queue; `start` is what its latency counts from.
  void Start(Worker& worker, absl::Time start) {
    const int64_t index = next_index_.fetch_add(1, std::memory_order_relaxed);
    v1::MsgReadService::Stub& stub = *stubs_[static_cast<size_t>(index) % stubs_.size()];
    auto* call = new Call;
    call->start = start;
    call->context.set_deadline(std::chrono::system_clock::now() +
                               absl::ToChronoMilliseconds(options_.deadline));
    if (!options_.caller.empty()) call->context.AddMetadata("imgw-caller", options_.caller);
    in_flight_.fetch_add(1);
    sent_.fetch_add(1, std::memory_order_relaxed);
    if (options_.batch) {
      for (int j = 0; j < options_.batch_size; ++j) {
        Fill(*call->batch_request.add_items(), index * options_.batch_size + j);
      }
      if (options_.enqueue) {
        call->batch_enqueue_reader = stub.PrepareAsyncBatchEnqueueSetMsgRead(
            &call->context, call->batch_request, &worker.cq);
        call->batch_enqueue_reader->StartCall();
        call->batch_enqueue_reader->Finish(&call->batch_enqueue_response, &call->status, call);
        return;
      }
      call->batch_reader =
          stub.PrepareAsyncBatchSetMsgRead(&call->context, call->batch_request, &worker.cq);
      call->batch_reader->StartCall();
      call->batch_reader->Finish(&call->batch_response, &call->status, call);
    } else if (options_.enqueue) {
      Fill(call->set_request, index);
      call->enqueue_reader =
          stub.PrepareAsyncEnqueueSetMsgRead(&call->context, call->set_request, &worker.cq);
      call->enqueue_reader->StartCall();
      call->enqueue_reader->Finish(&call->enqueue_response, &call->status, call);
    } else {
      Fill(call->set_request, index);
      call->set_reader = stub.PrepareAsyncSetMsgRead(&call->context, call->set_request, &worker.cq);
      call->set_reader->StartCall();
      call->set_reader->Finish(&call->set_response, &call->status, call);
    }
  }

  void Drain(Worker& worker) {
    void* tag = nullptr;
    bool ok = false;
    while (worker.cq.Next(&tag, &ok)) {
      auto* call = static_cast<Call*>(tag);
      const absl::Time now = absl::Now();
      worker.latency.Record(now - call->start);
      ++worker.answered;
      ++worker.codes[static_cast<size_t>(CodeIndex(call->status.error_code()))];
      if (options_.batch && call->status.ok()) {
        for (const v1::SetMsgReadResult& result : call->batch_response.results()) {
          ++worker.item_codes[static_cast<size_t>(CodeIndex(result.code()))];
        }
        for (const v1::EnqueueResult& result : call->batch_enqueue_response.results()) {
          ++worker.item_codes[static_cast<size_t>(CodeIndex(result.code()))];
        }
      }
      delete call;
      // The next call before this one leaves in_flight_, so that it never reads 0 while a
      // closed loop still runs.
      if (!options_.open_loop && now < stop_) Start(worker, now);
      in_flight_.fetch_sub(1);
    }
  }

  Report Collect() {
    Report report;
    report.rpc = options_.enqueue ? (options_.batch ? "batch_enqueue" : "enqueue")
                                  : (options_.batch ? "batch" : "set");
    report.batch_size = options_.batch ? options_.batch_size : 0;
    report.mode = options_.open_loop ? "open" : "closed";
    if (options_.open_loop) {
      report.target_rate = options_.rate;
    } else {
      report.concurrency = options_.concurrency;
    }
    report.pairs = PairDistributionName(options_.pairs.distribution);
    if (options_.pairs.distribution != PairDistribution::kDistinct) {
      report.pair_count = options_.pairs.count;
    }
    report.duration = options_.duration;
    report.sent = sent_.load();
    report.not_sent = not_sent_;
    for (const auto& worker : workers_) {
      report.answered += worker->answered;
      report.latency.Merge(worker->latency);
      for (int c = 0; c < kCodes; ++c) {
        const auto code = static_cast<grpc::StatusCode>(c);
        if (worker->codes[static_cast<size_t>(c)] > 0) {
          report.codes[std::string(GrpcCodeName(code))] += worker->codes[static_cast<size_t>(c)];
        }
        if (worker->item_codes[static_cast<size_t>(c)] > 0) {
          report.item_codes[std::string(GrpcCodeName(code))] +=
              worker->item_codes[static_cast<size_t>(c)];
        }
      }
    }
    return report;
  }

  const DriverOptions options_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::MsgReadService::Stub>> stubs_;
  std::vector<std::unique_ptr<Worker>> workers_;
  absl::Mutex pairs_mu_;
  std::unique_ptr<PairGenerator> pairs_ ABSL_GUARDED_BY(pairs_mu_);
  absl::Time t0_;
  absl::Time stop_;
  std::atomic<int64_t> next_index_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> sent_{0};
  int64_t not_sent_ = 0;  // The sending thread's alone.
};

}  // namespace

absl::StatusOr<Report> RunLoad(const DriverOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("no target");
  if (options.credentials == nullptr) return absl::InvalidArgumentError("no credentials");
  if (options.channels < 1 || options.threads < 1) {
    return absl::InvalidArgumentError("channels and threads must be at least 1");
  }
  if (options.batch && (options.batch_size < 1)) {
    return absl::InvalidArgumentError("the batch size must be at least 1");
  }
  if (options.open_loop ? !(options.rate > 0) : options.concurrency < 1) {
    return absl::InvalidArgumentError("the rate or the concurrency must be positive");
  }
  if (options.max_in_flight < 1 || options.duration <= absl::ZeroDuration() ||
      options.deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "max_in_flight, the duration and the deadline must be positive");
  }
  absl::StatusOr<std::unique_ptr<PairGenerator>> pairs = PairGenerator::Create(options.pairs);
  if (!pairs.ok()) return pairs.status();
  Driver driver(options, *std::move(pairs));
  if (absl::Status connected = driver.Connect(); !connected.ok()) return connected;
  return driver.Run();
}

}  // namespace imgw::loadgen
