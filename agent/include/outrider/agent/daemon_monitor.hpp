#pragma once
// Watches the local daemons (vmm, netd) over their sockets: health every interval, and their event
// streams, which the agent forwards to the hub.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "outrider/common/ipc.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::agent {

class DaemonMonitor {
 public:
  struct Target {
    std::string name;  // "vmm", "netd"
    std::filesystem::path socket;
  };
  /// Called when a daemon's state or version changes, or when it restarted between two polls.
  using ChangeFn = std::function<void(const outrider::v1::DaemonHealth& now)>;
  using EventFn = std::function<void(const std::string& daemon, const outrider::v1::LocalEvent&)>;

  DaemonMonitor(boost::asio::io_context& io, std::vector<Target> targets, std::chrono::milliseconds interval,
                ChangeFn onChange, EventFn onEvent);
  void start();
  void stop();
  /// One request to a daemon ("vmm", "netd"); `done` runs on the loop, with an Error when the daemon is
  /// unreachable or does not answer within `timeout`.
  void call(const std::string& daemon, outrider::v1::LocalRequest req, std::chrono::milliseconds timeout,
            ipc::Client::ReplyFn done);
  /// Latest known health of each daemon, in target order.
  std::vector<outrider::v1::DaemonHealth> health() const;

 private:
  struct Watched;
  void poll();
  std::vector<std::shared_ptr<Watched>> watched_;
  std::chrono::milliseconds interval_;
  ChangeFn onChange_;
  EventFn onEvent_;
  boost::asio::steady_timer timer_;
  bool stopped_ = false;
};

}  // namespace outrider::agent
