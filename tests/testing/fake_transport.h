#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>
#include <limits>
#include <utility>

#include "lib/upstream/http_transport.h"

namespace imgw::testing {

// An HttpTransport that records requests and completes them only when the test says so.
// Single-threaded, like the dispatcher it serves.
class FakeTransport final : public upstream::HttpTransport {
 public:
  struct Pending {
    upstream::HttpRequest request;
    Callback done;
  };

  void Start(upstream::HttpRequest request, Callback done) override {
    pending_.push_back({std::move(request), std::move(done)});
    ++started_;
  }

  // A pool of `limit` requests at once (unbounded by default), of which `warm` can start on a
  // connection already open (all of them by default).
  size_t Capacity() override { return pending_.size() < limit_ ? limit_ - pending_.size() : 0; }
  size_t WarmCapacity() override { return std::min(Capacity(), warm_); }
  void Anticipate(size_t requests) override { anticipated_ = requests; }
  void set_limit(size_t limit) { limit_ = limit; }
  void set_warm(size_t warm) { warm_ = warm; }
  size_t anticipated() const { return anticipated_; }

  std::deque<Pending>& pending() { return pending_; }
  int started() const { return started_; }

  // Completes the oldest pending request with an HTTP 200 and `body`.
  void Answer(const std::string& body) { AnswerAt(0, 200, body); }
  void AnswerAt(size_t index, long status, const std::string& body) {
    Pending p = std::move(pending_.at(index));
    pending_.erase(pending_.begin() + static_cast<long>(index));
    upstream::HttpResponse response;
    response.http_status = status;
    response.body = body;
    response.spent = std::move(p.request);  // As the real transports hand it back.
    p.done(std::move(response));
  }
  // Fails the oldest pending request; `broken_connection` as a transport sets it when the
  // request's connection broke.
  void Fail(upstream::HttpResponse::Error error, uint64_t broken_connection = 0) {
    Pending p = std::move(pending_.front());
    pending_.pop_front();
    upstream::HttpResponse response;
    response.error = error;
    response.broken_connection = broken_connection;
    response.error_detail = "injected";
    response.spent = std::move(p.request);
    p.done(std::move(response));
  }

 private:
  std::deque<Pending> pending_;
  int started_ = 0;
  size_t limit_ = std::numeric_limits<size_t>::max();
  size_t warm_ = std::numeric_limits<size_t>::max();
  size_t anticipated_ = 0;
};

}  // namespace imgw::testing
