#pragma once
// The agent's half of a trial boot (boot.hpp): while the boot watcher's DIR/trial is open, judge the node's
// health once a second with an update's rules and write DIR/verdict (healthy at once, unhealthy at the
// deadline); report the watcher's DIR/last to the hub as a `boot.<kind>` event, once.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <string>

#include "outrider/agent/boot.hpp"
#include "outrider/agent/update_service.hpp"

namespace outrider::agent {

class BootCheck {
 public:
  /// kind ("boot.committed", ...), subject (the slot), detail.
  using EventFn = std::function<void(const std::string&, const std::string&, const std::string&)>;

  BootCheck(boost::asio::io_context& io, boot::BootConfig cfg, UpdateHost host, EventFn event);
  void start();
  void stop();

  std::chrono::milliseconds tickInterval{1000};

 private:
  void arm();
  void tick();
  void judge(const boot::Trial& t);
  void report();

  boost::asio::io_context& io_;
  boot::BootConfig cfg_;
  UpdateHost host_;
  EventFn event_;
  boost::asio::steady_timer timer_;
  bool busy_ = false, stopped_ = false;
  std::string warned_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace outrider::agent
