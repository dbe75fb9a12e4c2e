#include "outrider/agent/boot_check.hpp"

#include <fmt/format.h>

#include "outrider/common/clock.hpp"
#include "outrider/common/log.hpp"

namespace outrider::agent {

namespace fs = std::filesystem;

BootCheck::BootCheck(boost::asio::io_context& io, boot::BootConfig cfg, UpdateHost host, EventFn event)
    : io_(io), cfg_(std::move(cfg)), host_(std::move(host)), event_(std::move(event)), timer_(io) {}

void BootCheck::start() {
  if (!cfg_.enabled()) return;
  // The watcher (root) makes the directory at boot; the agent makes it too, so that its verdict has a place
  // when the agent runs first.
  std::error_code ec;
  fs::create_directories(cfg_.dir, ec);
  tick();
}

void BootCheck::stop() {
  stopped_ = true;
  timer_.cancel();
}

void BootCheck::arm() {
  if (stopped_) return;
  timer_.expires_after(tickInterval);
  std::weak_ptr<int> life = alive_;
  timer_.async_wait([this, life](const boost::system::error_code& ec) {
    if (!ec && !life.expired() && !stopped_) tick();
  });
}

void BootCheck::tick() {
  report();
  if (busy_) return arm();
  auto t = boot::readTrial(boot::trialFile(cfg_.dir));
  if (!t) {
    if (warned_ != t.error().message) LOG_WARN("boot slots: {}", t.error().message);
    warned_ = t.error().message;
    return arm();
  }
  if (!*t) return arm();
  auto v = update::readVerdict(boot::verdictFile(cfg_.dir));
  if (v && *v && (*v)->commandId == boot::verdictKey((*t)->bootId)) return arm();  // judged; the watcher acts
  judge(**t);
}

// The daemons must answer (a box without KVM runs vmm degraded, and that is its normal), the hub must be
// reachable and the manifest's guests running.
void BootCheck::judge(const boot::Trial& t) {
  busy_ = true;
  std::map<std::string, std::string> baseline;
  for (const auto& h : host_.daemons()) baseline[h.name()] = "DEGRADED";
  std::weak_ptr<int> life = alive_;
  checkNodeHealth(host_, life, std::move(baseline), false, [this, t](std::vector<std::string> problems) {
    busy_ = false;
    if (stopped_) return;
    const auto now = SystemClock().nowMs();
    update::Verdict v;
    v.commandId = boot::verdictKey(t.bootId);
    if (problems.empty()) {
      v.healthy = true;
      v.healthMs = static_cast<std::uint32_t>(std::max<std::int64_t>(0, now - t.startedAtMs));
    } else if (now >= t.deadlineAtMs) {
      for (const auto& p : problems) v.reason += (v.reason.empty() ? "" : "; ") + p;
    } else {
      return arm();
    }
    if (auto w = update::writeState(boot::verdictFile(cfg_.dir), v.encode()); !w) {
      LOG_ERR("boot slots: cannot write the verdict: {}", w.error().message);
      return arm();
    }
    if (v.healthy) LOG_NOTICE("boot slots: {}: healthy after {} ms", t.message, v.healthMs);
    else LOG_WARN("boot slots: {}: unhealthy at the deadline: {}", t.message, v.reason);
    arm();
  });
}

// DIR/last once to the hub, then kept as DIR/last.reported.
void BootCheck::report() {
  std::error_code ec;
  if (!fs::exists(boot::lastFile(cfg_.dir), ec) || !host_.hubConnected()) return;
  auto o = boot::readOutcome(boot::lastFile(cfg_.dir));
  if (o && *o) {
    const auto& x = **o;
    event_("boot." + x.kind, "slot " + x.slot, x.hooks.empty() ? x.message : x.message + "; " + x.hooks);
  } else if (!o) {
    LOG_WARN("boot slots: {}", o.error().message);
  }
  fs::rename(boot::lastFile(cfg_.dir), cfg_.dir / "last.reported", ec);
}

}  // namespace outrider::agent
