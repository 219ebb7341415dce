#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "imgw/v1/queue_admin.grpc.pb.h"

// QueueAdminService from tests of the real gateway. Header-only: the includer links
// gRPC::grpc++ and imgw::proto.
namespace imgw::testing {

// Every dead letter, following the page tokens with pages of `page_size`: an error when a call
// fails, a page holds more than `page_size`, or there are more than `max_pages` pages.
inline absl::StatusOr<std::vector<v1::DeadLetter>> ListAllDeadLetters(
    v1::QueueAdminService::Stub& admin, int page_size, int max_pages = 10) {
  std::vector<v1::DeadLetter> letters;
  std::string token;
  for (int page = 0; page < max_pages; ++page) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ListDeadLettersRequest request;
    request.set_page_size(page_size);
    request.set_page_token(token);
    v1::ListDeadLettersResponse response;
    grpc::Status status = admin.ListDeadLetters(&context, request, &response);
    if (!status.ok()) {
      return absl::UnknownError(
          absl::StrCat("ListDeadLetters: ", status.error_code(), ": ", status.error_message()));
    }
    if (response.dead_letters_size() > page_size) {
      return absl::InternalError(absl::StrCat("a page of ", response.dead_letters_size(),
                                              " dead letters, asked for ", page_size));
    }
    for (const v1::DeadLetter& letter : response.dead_letters()) letters.push_back(letter);
    token = response.next_page_token();
    if (token.empty()) return letters;
  }
  return absl::InternalError(absl::StrCat("more than ", max_pages, " pages"));
}

}  // namespace imgw::testing
