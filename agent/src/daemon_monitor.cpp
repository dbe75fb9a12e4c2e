#include "outrider/agent/daemon_monitor.hpp"

#include "outrider/common/log.hpp"

namespace outrider::agent {

using outrider::v1::DaemonHealth;

struct DaemonMonitor::Watched {
  Target target;
  ipc::Client client;
  DaemonHealth health;
  Watched(boost::asio::io_context& io, Target t) : target(std::move(t)), client(io, target.socket) {
    health.set_name(target.name);
    health.set_state(DaemonHealth::UNREACHABLE);
    health.set_detail("not checked yet");
  }
};

namespace {
std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

DaemonMonitor::DaemonMonitor(boost::asio::io_context& io, std::vector<Target> targets,
                             std::chrono::milliseconds interval, ChangeFn onChange, EventFn onEvent)
    : interval_(interval), onChange_(std::move(onChange)), onEvent_(std::move(onEvent)), timer_(io) {
  for (auto& t : targets) watched_.push_back(std::make_shared<Watched>(io, std::move(t)));
}

void DaemonMonitor::start() {
  for (auto& w : watched_)
    w->client.subscribe([this, name = w->target.name](const outrider::v1::LocalEvent& ev) {
      if (!stopped_ && onEvent_) onEvent_(name, ev);
    });
  poll();
}

void DaemonMonitor::stop() {
  stopped_ = true;
  timer_.cancel();
  for (auto& w : watched_) w->client.close();
}

void DaemonMonitor::call(const std::string& daemon, outrider::v1::LocalRequest req, std::chrono::milliseconds timeout,
                         ipc::Client::ReplyFn done) {
  for (auto& w : watched_)
    if (w->target.name == daemon) return w->client.call(std::move(req), timeout, std::move(done));
  done(Error{"no daemon named " + daemon});
}

std::vector<DaemonHealth> DaemonMonitor::health() const {
  std::vector<DaemonHealth> out;
  for (const auto& w : watched_) out.push_back(w->health);
  return out;
}

void DaemonMonitor::poll() {
  if (stopped_) return;
  for (auto& w : watched_) {
    outrider::v1::LocalRequest req;
    req.mutable_health();
    w->client.call(std::move(req), std::chrono::milliseconds(2000),
                   [this, w](Result<outrider::v1::LocalReply> r) {
                     if (stopped_) return;
                     DaemonHealth h;
                     h.set_name(w->target.name);
                     h.set_checked_at_ms(nowMs());
                     if (!r) {
                       h.set_state(DaemonHealth::UNREACHABLE);
                       h.set_detail(r.error().message);
                     } else if (r->has_error() && r->error().code() != outrider::v1::LocalError::CODE_UNSPECIFIED) {
                       h.set_state(DaemonHealth::DEGRADED);
                       h.set_detail(r->error().message());
                     } else {
                       const auto& hr = r->health();
                       h.set_state(hr.healthy() ? DaemonHealth::HEALTHY : DaemonHealth::DEGRADED);
                       h.set_version(hr.version());
                       h.set_detail(hr.detail());
                       h.set_uptime_s(hr.uptime_s());
                     }
                     // A daemon that restarted between two polls shows a smaller uptime: report that too,
                     // so the agent hands it the desired state again.
                     bool restarted = h.state() == DaemonHealth::HEALTHY && w->health.state() == DaemonHealth::HEALTHY &&
                                      h.uptime_s() < w->health.uptime_s();
                     bool changed = restarted || h.state() != w->health.state() || h.version() != w->health.version();
                     w->health = h;
                     if (changed) {
                       LOG_NOTICE("{}: {}{}", h.name(), DaemonHealth::State_Name(h.state()),
                                  h.detail().empty() ? "" : " (" + h.detail() + ")");
                       if (onChange_) onChange_(h);
                     }
                   });
  }
  timer_.expires_after(interval_);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) poll();
  });
}

}  // namespace outrider::agent
