#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "tests/testing/async_calls.h"
#include "tests/testing/grpc_client.h"

// Open-loop SetMsgRead load on one or several gateways, for end-to-end tests. Header-only: the
// includer links gRPC::grpc++, imgw::proto and absl::synchronization.
namespace imgw::testing {

// Every gateway gets `rate` calls per second of distinct pairs ("<prefix>_r<n>",
// "<prefix>_p<n>", read time base_time + n), started in small batches every few milliseconds on
// two channels of its own with the imgw-caller "replica<i>", whatever the answers do. Stops at
// Stop() or after `max_duration`, so the number of calls is bounded. Every batch is kept with
// its start time, for per-phase counts once the load is over. Start/Stop from one thread.
class OpenLoad final {
 public:
  struct Shape {
    std::string prefix = "load";
    int64_t base_time = 1700000000;
    absl::Duration deadline = absl::Seconds(2);
  };
  struct Batch {
    int replica;
    absl::Time started;
    std::unique_ptr<AsyncCalls> calls;
  };

  OpenLoad(std::vector<std::string> addresses, double rate, absl::Duration max_duration,
           Shape shape)
      : addresses_(std::move(addresses)),
        rate_(rate),
        max_duration_(max_duration),
        shape_(std::move(shape)) {
    for (const std::string& address : addresses_) {
      auto& stubs = stubs_.emplace_back();
      stubs.push_back(NewStub(address));
      stubs.push_back(NewStub(address));
    }
  }
  ~OpenLoad() { Stop(); }

  void Start() {
    start_ = absl::Now();
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  absl::Time start() const { return start_; }

  // After Stop(): waits up to `timeout` for every call to be answered; true when all were.
  bool WaitAll(absl::Duration timeout) {
    const absl::Time until = absl::Now() + timeout;
    for (Batch& batch : batches_) {
      if (!batch.calls->Wait(std::max(absl::ZeroDuration(), until - absl::Now()))) return false;
    }
    return true;
  }
  int Unanswered() {
    int n = 0;
    for (Batch& batch : batches_) n += batch.calls->size() - batch.calls->Answered();
    return n;
  }
  // After Stop().
  const std::vector<Batch>& batches() const { return batches_; }
  int started_calls() const { return started_calls_; }

 private:
  void Run() {
    std::vector<int64_t> sent(addresses_.size(), 0);
    int64_t next_pair = 0;
    const int64_t max_per_replica =
        static_cast<int64_t>(rate_ * absl::ToDoubleSeconds(max_duration_)) + 1;
    while (!stop_.load()) {
      const absl::Time now = absl::Now();
      const absl::Duration elapsed = now - start_;
      if (elapsed >= max_duration_) break;
      for (size_t r = 0; r < addresses_.size(); ++r) {
        const int64_t due =
            std::min(max_per_replica, static_cast<int64_t>(rate_ * absl::ToDoubleSeconds(elapsed)));
        if (due <= sent[r]) continue;
        auto calls = std::make_unique<AsyncCalls>();
        for (; sent[r] < due; ++sent[r]) {
          const int64_t pair = next_pair++;
          v1::SetMsgReadRequest request;
          request.set_report_account(absl::StrCat(shape_.prefix, "_r", pair));
          request.set_peer_account(absl::StrCat(shape_.prefix, "_p", pair));
          request.set_msg_read_time(shape_.base_time + pair);
          calls->Add(std::move(request), shape_.deadline, absl::StrCat("replica", r));
        }
        started_calls_ += calls->size();
        calls->StartAll(*stubs_[r][batches_.size() % 2]);
        batches_.push_back({static_cast<int>(r), now, std::move(calls)});
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
  }

  const std::vector<std::string> addresses_;
  const double rate_;
  const absl::Duration max_duration_;
  const Shape shape_;
  std::vector<std::vector<std::unique_ptr<v1::MsgReadService::Stub>>> stubs_;
  absl::Time start_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  // The load thread's until Stop() returned, then the test thread's.
  std::vector<Batch> batches_;
  int started_calls_ = 0;
};

}  // namespace imgw::testing
