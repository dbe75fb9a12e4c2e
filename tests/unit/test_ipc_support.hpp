#pragma once
// Helpers for tests that drive ipc::Server and ipc::Client on one io_context in the test thread.
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "outrider/common/ipc.hpp"

namespace outrider::test {

/// Run the loop until `done` holds or `timeout` passes; true if it holds. Returns as soon as a handler
/// changes the state, so no test waits longer than the event takes.
inline bool runUntil(boost::asio::io_context& io, const std::function<bool()>& done,
                     std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    io.restart();
    io.run_one_until(deadline);
  }
  return true;
}

inline outrider::v1::LocalRequest healthRequest() {
  outrider::v1::LocalRequest req;
  req.mutable_health();
  return req;
}

/// One call, run to completion on `io`.
inline Result<outrider::v1::LocalReply> callAndWait(boost::asio::io_context& io, ipc::Client& client,
                                                    outrider::v1::LocalRequest req = healthRequest(),
                                                    std::chrono::milliseconds timeout = std::chrono::seconds(3)) {
  // Shared, so a completion that comes after a failed wait does not write into a dead frame.
  auto out = std::make_shared<std::optional<Result<outrider::v1::LocalReply>>>();
  client.call(std::move(req), timeout, [out](Result<outrider::v1::LocalReply> r) { out->emplace(std::move(r)); });
  if (!runUntil(io, [&] { return out->has_value(); }, timeout + std::chrono::seconds(5)))
    return Error{"call never completed"};
  return std::move(**out);
}

}  // namespace outrider::test
