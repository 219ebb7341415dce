// QueueLoop on a real SQLite file: group commit, draining through a stand-in dispatcher (the
// `submit` seam: the test answers the calls it is handed), settling by the policy, the bounds
// (max_pending, max_outstanding), SetMsgRead settling the queue, stopping. A forwarding store
// counts transactions and fails them on demand; everything else is the SqliteStore.
#include "lib/queue/queue_loop.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "lib/queue/sqlite_store.h"
#include "prometheus/registry.h"
#include "tests/testing/process.h"

namespace imgw::queue {
namespace {

using upstream::Outcome;

// Forwards to the real store; counts Enqueue transactions and fails the next ones on demand.
class ForwardingStore final : public PendingStore {
 public:
  explicit ForwardingStore(std::unique_ptr<PendingStore> store) : store_(std::move(store)) {}
  absl::StatusOr<std::vector<EnqueueResult>> Enqueue(absl::Span<const EnqueueItem> items) override {
    enqueue_calls.fetch_add(1);
    if (fail_enqueues.load() > 0) {
      fail_enqueues.fetch_sub(1);
      return absl::UnavailableError("disk full (injected)");
    }
    return store_->Enqueue(items);
  }
  absl::StatusOr<std::vector<PendingEntry>> Claim(size_t max, int64_t now_ms) override {
    return store_->Claim(max, now_ms);
  }
  absl::Status Settle(absl::Span<const Settlement> s) override { return store_->Settle(s); }
  absl::StatusOr<bool> SettlePairApplied(const std::string& report, const std::string& peer,
                                         int64_t time) override {
    return store_->SettlePairApplied(report, peer, time);
  }
  absl::StatusOr<QueueStats> Stats(size_t max_callers) override {
    return store_->Stats(max_callers);
  }
  absl::StatusOr<std::pair<std::vector<DeadLetter>, std::string>> ListDeadLetters(
      const std::string& token, size_t size) override {
    return store_->ListDeadLetters(token, size);
  }
  absl::StatusOr<int64_t> RetryDeadLetters(const DeadLetterFilter& f, int64_t now) override {
    return store_->RetryDeadLetters(f, now);
  }
  absl::StatusOr<int64_t> DropDeadLetters(const DeadLetterFilter& f) override {
    return store_->DropDeadLetters(f);
  }
  int64_t pending() const override { return store_->pending(); }
  int64_t dead_letters() const override { return store_->dead_letters(); }
  // As a store shared by replicas would: claims with a lease, renewals recorded.
  absl::Duration lease() const override { return lease_; }
  absl::Status RenewClaims(absl::Span<const ClaimRef> claims) override {
    absl::MutexLock lock(&mu_);
    std::vector<int64_t> ids;
    for (const ClaimRef& c : claims) ids.push_back(c.id);
    std::sort(ids.begin(), ids.end());
    renewals_.push_back(std::move(ids));
    return absl::OkStatus();
  }
  std::vector<std::vector<int64_t>> renewals() {
    absl::MutexLock lock(&mu_);
    return renewals_;
  }

  std::atomic<int> enqueue_calls{0};
  std::atomic<int> fail_enqueues{0};
  absl::Duration lease_ = absl::InfiniteDuration();  // set before the loop starts

 private:
  std::unique_ptr<PendingStore> store_;
  absl::Mutex mu_;
  std::vector<std::vector<int64_t>> renewals_ ABSL_GUARDED_BY(mu_);
};

// What the loop handed to the "dispatcher", for the test to answer.
class Calls {
 public:
  void Submit(std::vector<dispatch::Call> calls) {
    absl::MutexLock lock(&mu_);
    for (dispatch::Call& call : calls) calls_.push_back(std::move(call));
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return calls_.size();
  }
  // Answers every call held with `outcome` (per call); returns how many.
  template <typename F>
  size_t AnswerAll(F outcome) {
    std::vector<dispatch::Call> calls;
    {
      absl::MutexLock lock(&mu_);
      calls.swap(calls_);
    }
    for (dispatch::Call& call : calls) call.done(outcome(call));
    return calls.size();
  }
  // Answers the first `n` calls held (or all, if fewer) OK; returns how many.
  size_t AnswerOk(size_t n) {
    std::vector<dispatch::Call> calls;
    {
      absl::MutexLock lock(&mu_);
      n = std::min(n, calls_.size());
      calls.assign(std::make_move_iterator(calls_.begin()),
                   std::make_move_iterator(calls_.begin() + static_cast<long>(n)));
      calls_.erase(calls_.begin(), calls_.begin() + static_cast<long>(n));
    }
    for (dispatch::Call& call : calls) call.done(Outcome::Answered("OK", 0, ""));
    return calls.size();
  }

 private:
  absl::Mutex mu_;
  std::vector<dispatch::Call> calls_ ABSL_GUARDED_BY(mu_);
};

// Polls `done` every 5 ms for up to 5 s.
template <typename F>
bool Eventually(F done) {
  for (absl::Time until = absl::Now() + absl::Seconds(5); absl::Now() < until;) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return done();
}

class QueueLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("imgw-queue-loop");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<testing::TempDir>(*std::move(dir));
    OpenStore();
  }
  void TearDown() override {
    if (loop_ != nullptr) {
      loop_->StopTaking();
      calls_.AnswerAll([](const dispatch::Call&) {
        return Outcome::Failed(Outcome::Kind::kShuttingDown, "test over");
      });
      loop_->Stop();
    }
  }

  void OpenStore() {
    absl::StatusOr<std::unique_ptr<SqliteStore>> store =
        SqliteStore::Open({dir_->File("queue.db"), /*fsync=*/false});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<ForwardingStore>(*std::move(store));
  }

  void Start(QueueLoop::Options options) {
    options.idle_poll = absl::Milliseconds(10);
    options.seed = 1;
    metrics_ = std::make_unique<metrics::QueueMetrics>(registry_);
    loop_ = std::make_unique<QueueLoop>(
        options, *store_, RealClock::Get(),
        [this](std::vector<dispatch::Call> calls) { calls_.Submit(std::move(calls)); },
        metrics_.get());
    loop_->Start();
  }

  // Enqueues one item per report in `reports` (peer "p"), each its own request; waits for
  // every answer.
  std::vector<QueueLoop::EnqueueAnswer> EnqueueEach(const std::vector<std::string>& reports,
                                                    int64_t time = 1700000000) {
    struct Shared {
      absl::Mutex mu;
      std::vector<QueueLoop::EnqueueAnswer> answers;
      int done = 0;
    };
    auto shared = std::make_shared<Shared>();
    shared->answers.resize(reports.size());
    for (size_t i = 0; i < reports.size(); ++i) {
      std::vector<EnqueueItem> items{
          {reports[i], "p", time, "caller", absl::ToUnixMillis(absl::Now())}};
      loop_->Enqueue(std::move(items), [shared, i](QueueLoop::EnqueueAnswer answer) {
        absl::MutexLock lock(&shared->mu);
        shared->answers[i] = std::move(answer);
        ++shared->done;
      });
    }
    EXPECT_TRUE(Eventually([&] {
      absl::MutexLock lock(&shared->mu);
      return shared->done == static_cast<int>(reports.size());
    }));
    absl::MutexLock lock(&shared->mu);
    return shared->answers;
  }

  // Runs `task` on the queue's thread and waits for it.
  template <typename T, typename F>
  T OnStore(F f) {
    auto result = std::make_shared<std::pair<absl::Mutex, std::optional<T>>>();
    EXPECT_TRUE(loop_->RunOnStore([result, f](PendingStore& store) mutable {
      T value = f(store);
      absl::MutexLock lock(&result->first);
      result->second = std::move(value);
    }));
    EXPECT_TRUE(Eventually([&] {
      absl::MutexLock lock(&result->first);
      return result->second.has_value();
    }));
    absl::MutexLock lock(&result->first);
    return *result->second;
  }
  int64_t Pending() {
    return OnStore<int64_t>([](PendingStore& s) { return s.pending(); });
  }

  std::unique_ptr<testing::TempDir> dir_;
  std::unique_ptr<ForwardingStore> store_;
  prometheus::Registry registry_;
  std::unique_ptr<metrics::QueueMetrics> metrics_;
  Calls calls_;
  std::unique_ptr<QueueLoop> loop_;
};

std::vector<std::string> Names(const std::string& prefix, int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) names.push_back(prefix + std::to_string(i));
  return names;
}

TEST_F(QueueLoopTest, EnqueuesArrivingTogetherShareOneTransaction) {
  QueueLoop::Options options;
  options.max_outstanding = 1;  // Keep the drain out of the way.
  Start(options);
  // Stall the loop's thread on a task, so that the 200 requests arrive while it is busy.
  absl::Notification running;
  absl::Notification release;
  ASSERT_TRUE(loop_->RunOnStore([&running, &release](PendingStore&) {
    running.Notify();
    release.WaitForNotification();
  }));
  ASSERT_TRUE(running.WaitForNotificationWithTimeout(absl::Seconds(5)));
  std::thread enqueuer([this] { EnqueueEach(Names("r", 200)); });
  absl::SleepFor(absl::Milliseconds(100));
  const int before = store_->enqueue_calls.load();
  release.Notify();
  enqueuer.join();
  EXPECT_EQ(store_->enqueue_calls.load() - before, 1)
      << "200 requests, one transaction; before " << before;
  EXPECT_EQ(Pending(), 200);
}

TEST_F(QueueLoopTest, AnswersSayWhetherTheyMergedAndHowMuchIsPending) {
  QueueLoop::Options options;
  options.max_outstanding = 1;
  options.rate = 100;
  Start(options);
  std::vector<QueueLoop::EnqueueAnswer> first = EnqueueEach({"a", "b"}, 1700000000);
  ASSERT_TRUE(first[1].status.ok()) << first[1].status;
  EXPECT_FALSE(first[1].results.at(0).merged);
  EXPECT_EQ(first[1].pending, 2);
  EXPECT_EQ(first[1].estimated_delay, absl::Milliseconds(20));
  std::vector<QueueLoop::EnqueueAnswer> again = EnqueueEach({"b"}, 1700000099);
  ASSERT_TRUE(again[0].status.ok());
  EXPECT_TRUE(again[0].results.at(0).merged);
  EXPECT_TRUE(again[0].results.at(0).raised);
  EXPECT_EQ(again[0].pending, 2);
}

TEST_F(QueueLoopTest, DrainsOldestFirstAndRemovesWhatWasApplied) {
  Start({});
  EnqueueEach(Names("r", 50));
  ASSERT_TRUE(Eventually([&] { return calls_.size() == 50; }));
  std::vector<std::string> order;
  calls_.AnswerAll([&order](const dispatch::Call& call) {
    EXPECT_TRUE(call.background);
    EXPECT_EQ(call.deadline, absl::InfiniteDuration());
    order.push_back(call.params.report_account);
    return Outcome::Answered("OK", 0, "");
  });
  EXPECT_EQ(order, Names("r", 50));
  EXPECT_TRUE(Eventually([&] { return Pending() == 0; }));
  EXPECT_EQ(loop_->in_flight(), 0);
  // Each applied entry's time from its claim to its OK, in the histogram.
  uint64_t observed = 0;
  for (const prometheus::MetricFamily& family : registry_.Collect()) {
    if (family.name != "imgw_queue_claim_to_apply_seconds") continue;
    for (const prometheus::ClientMetric& m : family.metric) observed += m.histogram.sample_count;
  }
  EXPECT_EQ(observed, 50u);
}

TEST_F(QueueLoopTest, HandsTheDispatcherNoMoreThanMaxOutstanding) {
  QueueLoop::Options options;
  options.max_outstanding = 64;
  Start(options);
  EnqueueEach(Names("r", 300));
  ASSERT_TRUE(Eventually([&] { return calls_.size() == 64; }));
  absl::SleepFor(absl::Milliseconds(100));  // Several idle polls: still 64.
  EXPECT_EQ(calls_.size(), 64u);
  EXPECT_EQ(loop_->in_flight(), 64);
  size_t answered = 0;
  while (answered < 300) {
    ASSERT_TRUE(Eventually([&] { return calls_.size() > 0; })) << answered;
    EXPECT_LE(calls_.size(), 64u);
    answered +=
        calls_.AnswerAll([](const dispatch::Call&) { return Outcome::Answered("OK", 0, ""); });
  }
  EXPECT_EQ(answered, 300u);
  EXPECT_TRUE(Eventually([&] { return Pending() == 0; }));
}

TEST_F(QueueLoopTest, LeasedClaimsAreRenewedUntilSettled) {
  store_->lease_ = absl::Milliseconds(300);  // renewed every 100 ms
  Start(QueueLoop::Options{});
  EnqueueEach(Names("r", 3));
  ASSERT_TRUE(Eventually([&] { return calls_.size() == 3; }));
  ASSERT_TRUE(Eventually([&] { return store_->renewals().size() >= 2; }));
  EXPECT_EQ(store_->renewals().back().size(), 3u);
  calls_.AnswerOk(2);
  const size_t before = store_->renewals().size();
  ASSERT_TRUE(Eventually([&] { return store_->renewals().size() >= before + 2; }));
  EXPECT_EQ(store_->renewals().back().size(), 1u);  // the one still held
  calls_.AnswerOk(1);
  ASSERT_TRUE(Eventually([&] { return Pending() == 0; }));
  absl::SleepFor(absl::Milliseconds(250));
  const size_t settled = store_->renewals().size();
  absl::SleepFor(absl::Milliseconds(250));
  EXPECT_EQ(store_->renewals().size(), settled);  // nothing held: nothing renewed
}

TEST_F(QueueLoopTest, APacedReplicaHoldsAboutTwoSecondsOfWhatItSends) {
  QueueLoop::Options options;
  options.max_outstanding = 400;
  options.pace_by_drain = true;
  Start(options);
  EnqueueEach(Names("r", 500));
  // Before anything was sent: the least a paced replica claims.
  ASSERT_TRUE(Eventually([&] { return calls_.size() == QueueLoop::kMinPacedClaims; }));
  // Its dispatcher sends 40 a second; unpaced, it would be handed up to 400.
  size_t most = 0;
  for (int i = 0; i < 30; ++i) {  // 3 s
    calls_.AnswerOk(4);
    absl::SleepFor(absl::Milliseconds(100));
    if (i >= 10) most = std::max(most, calls_.size());
  }
  EXPECT_GE(most, 8u);
  EXPECT_LE(most, 2 * 40 + 16u);
}

TEST_F(QueueLoopTest, PerPairRefusalsBecomeDeadLettersAndTransientOnesComeBack) {
  Start({});
  EnqueueEach({"dead", "again"});
  ASSERT_TRUE(Eventually([&] { return calls_.size() == 2; }));
  calls_.AnswerAll([](const dispatch::Call& call) {
    return call.params.report_account == "dead" ? Outcome::Answered("FAIL", 90001, "bad json")
                                                : Outcome::Answered("FAIL", 70500, "internal");
  });
  EXPECT_TRUE(Eventually(
      [&] { return OnStore<int64_t>([](PendingStore& s) { return s.dead_letters(); }) == 1; }));
  // The transient one is sent again after its backoff (0.5 to 1 s).
  const absl::Time answered = absl::Now();
  ASSERT_TRUE(Eventually([&] { return calls_.size() == 1; }));
  EXPECT_GE(absl::Now() - answered, absl::Milliseconds(450));
  calls_.AnswerAll([](const dispatch::Call& call) {
    EXPECT_EQ(call.params.report_account, "again");
    return Outcome::Answered("OK", 0, "");
  });
  EXPECT_TRUE(Eventually([&] { return Pending() == 0; }));
  auto page = OnStore<std::vector<DeadLetter>>(
      [](PendingStore& s) { return s.ListDeadLetters("", 10)->first; });
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0].report_account, "dead");
  EXPECT_EQ(page[0].error_code, 90001);
  EXPECT_EQ(page[0].error_info, "bad json");
}

TEST_F(QueueLoopTest, RefusesPastMaxPendingWithARetryAfter) {
  QueueLoop::Options options;
  options.max_pending = 10;
  options.max_outstanding = 1;
  Start(options);
  std::vector<QueueLoop::EnqueueAnswer> answers = EnqueueEach(Names("r", 12));
  int ok = 0;
  for (const auto& a : answers) {
    if (a.status.ok()) {
      ++ok;
      continue;
    }
    EXPECT_EQ(a.status.code(), absl::StatusCode::kResourceExhausted) << a.status;
    EXPECT_GE(a.retry_after, absl::Seconds(1));
  }
  EXPECT_EQ(ok, 10);
  EXPECT_EQ(Pending(), 10);
}

TEST_F(QueueLoopTest, AStoreThatCannotWriteAnswersUnavailableAndRecovers) {
  QueueLoop::Options options;
  options.max_outstanding = 1;
  Start(options);
  store_->fail_enqueues.store(1);
  std::vector<QueueLoop::EnqueueAnswer> failed = EnqueueEach({"a"});
  EXPECT_EQ(failed[0].status.code(), absl::StatusCode::kUnavailable) << failed[0].status;
  EXPECT_NE(failed[0].status.message().find("nothing was stored"), std::string::npos);
  std::vector<QueueLoop::EnqueueAnswer> later = EnqueueEach({"b"});
  EXPECT_TRUE(later[0].status.ok()) << later[0].status;
  EXPECT_EQ(Pending(), 1);
}

TEST_F(QueueLoopTest, ASetMsgReadAppliedSettlesTheEntriesItCovers) {
  QueueLoop::Options options;
  options.max_outstanding = 1;  // "a" is claimed; "b" and "c" wait in the store.
  Start(options);
  EnqueueEach({"a", "b", "c"}, 1700000050);
  ASSERT_TRUE(Eventually([&] { return calls_.size() == 1; }));
  loop_->PairApplied("b", "p", 1700000050);  // Covers b.
  loop_->PairApplied("c", "p", 1700000049);  // Older than c's entry: c stays.
  EXPECT_TRUE(Eventually([&] { return Pending() == 2; }));
  calls_.AnswerAll([](const dispatch::Call&) { return Outcome::Answered("OK", 0, ""); });
  ASSERT_TRUE(Eventually([&] { return calls_.size() == 1; }));
  calls_.AnswerAll([](const dispatch::Call& call) {
    EXPECT_EQ(call.params.report_account, "c");
    return Outcome::Answered("OK", 0, "");
  });
  EXPECT_TRUE(Eventually([&] { return Pending() == 0; }));
}

TEST_F(QueueLoopTest, StoppingRefusesEnqueuesClaimsNothingAndKeepsTheRest) {
  QueueLoop::Options options;
  options.max_outstanding = 2;
  Start(options);
  EnqueueEach(Names("r", 5));
  ASSERT_TRUE(Eventually([&] { return calls_.size() == 2; }));
  loop_->StopTaking();
  std::vector<QueueLoop::EnqueueAnswer> refused = EnqueueEach({"late"});
  EXPECT_EQ(refused[0].status.code(), absl::StatusCode::kUnavailable);
  // One applied, one answered "shutting down" by the dispatcher's stop.
  int n = 0;
  calls_.AnswerAll([&n](const dispatch::Call&) {
    return n++ == 0 ? Outcome::Answered("OK", 0, "")
                    : Outcome::Failed(Outcome::Kind::kShuttingDown, "stopping");
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(calls_.size(), 0u) << "nothing claimed once stopping";
  loop_->Stop();
  loop_.reset();
  // Reopened: four entries wait for the next start, none claimed.
  store_.reset();
  OpenStore();
  EXPECT_EQ(store_->pending(), 4);
  absl::StatusOr<std::vector<PendingEntry>> claimed =
      store_->Claim(10, absl::ToUnixMillis(absl::Now()));
  ASSERT_TRUE(claimed.ok());
  EXPECT_EQ(claimed->size(), 4u);
}

}  // namespace
}  // namespace imgw::queue
