#pragma once
// The agent's root object: owns the hub session, the command processor and journal, and the monitor of
// the local daemons, all on one io_context.
#include <boost/asio/io_context.hpp>
#include <functional>
#include <memory>

#include "outrider/agent/config.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/result.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::agent {

class Agent {
 public:
  Agent(boost::asio::io_context& io, AgentConfig cfg, const Clock& clock);
  ~Agent();
  /// Opens the journal, loads trusted keys, starts the hub session and the daemon monitor.
  Status start();
  void stop(std::function<void()> done);
  outrider::v1::NodeStatus status(bool online) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace outrider::agent
