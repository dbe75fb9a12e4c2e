#pragma once
// What every Outrider daemon shares around its one event loop: SIGTERM/SIGINT stop it cleanly,
// sd_notify READY/STOPPING, and WATCHDOG=1 pings from a timer on the loop itself (so a stuck loop is
// noticed and restarted by systemd).
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <string>

namespace outrider {

class DaemonRuntime {
 public:
  explicit DaemonRuntime(std::string name);
  boost::asio::io_context& io() { return io_; }
  /// Called on the loop when SIGTERM or SIGINT arrives, before the loop stops.
  void onStop(std::function<void()> fn) { onStop_ = std::move(fn); }
  /// Like onStop, for work that completes later (e.g. telling the hub goodbye): the loop keeps running
  /// until `done` is called, or at most `bound`.
  void onStopAsync(std::function<void(std::function<void()> done)> fn,
                   std::chrono::milliseconds bound = std::chrono::seconds(3)) {
    onStopAsync_ = std::move(fn);
    stopBound_ = bound;
  }
  /// Runs the loop: sends READY=1 once running, pings the watchdog, returns after a stop signal.
  int run();
  /// Ask for a stop from inside the loop.
  void stop();
  std::chrono::steady_clock::time_point startedAt() const { return started_; }
  const std::string& name() const { return name_; }

 private:
  void armWatchdog(std::chrono::microseconds interval);
  std::string name_;
  boost::asio::io_context io_{1};
  boost::asio::signal_set signals_;
  boost::asio::steady_timer watchdog_;
  std::function<void()> onStop_;
  std::function<void(std::function<void()>)> onStopAsync_;
  std::chrono::milliseconds stopBound_{3000};
  std::chrono::steady_clock::time_point started_;
  bool stopping_ = false;
};

}  // namespace outrider
