#include "outrider/common/daemon.hpp"

#include <boost/asio/post.hpp>
#include <csignal>

#include "outrider/common/log.hpp"
#include "outrider/common/notify.hpp"

namespace outrider {

DaemonRuntime::DaemonRuntime(std::string name)
    : name_(std::move(name)), signals_(io_, SIGTERM, SIGINT), watchdog_(io_), started_(std::chrono::steady_clock::now()) {
  std::signal(SIGPIPE, SIG_IGN);
}

void DaemonRuntime::armWatchdog(std::chrono::microseconds interval) {
  watchdog_.expires_after(interval / 2);
  watchdog_.async_wait([this, interval](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    notify::send("WATCHDOG=1");
    armWatchdog(interval);
  });
}

void DaemonRuntime::stop() {
  if (stopping_) return;
  stopping_ = true;
  notify::send("STOPPING=1");
  LOG_INFO("{}: stopping", name_);
  if (onStop_) onStop_();
  signals_.cancel();
  watchdog_.cancel();
  if (!onStopAsync_) {
    io_.stop();
    return;
  }
  auto bound = std::make_shared<boost::asio::steady_timer>(io_, stopBound_);
  bound->async_wait([this](const boost::system::error_code& ec) {
    if (!ec) {
      LOG_WARN("{}: stop did not complete in time, stopping anyway", name_);
      io_.stop();
    }
  });
  onStopAsync_([this, bound] {
    bound->cancel();
    io_.stop();
  });
}

int DaemonRuntime::run() {
  signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    LOG_INFO("{}: received signal {}", name_, sig);
    stop();
  });
  if (auto wd = notify::watchdogInterval()) armWatchdog(*wd);
  boost::asio::post(io_, [this] {
    notify::send("READY=1");
    LOG_NOTICE("{}: ready", name_);
  });
  io_.run();
  return 0;
}

}  // namespace outrider
