#include "outrider/agent/update_service.hpp"

#include <fmt/format.h>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/log.hpp"

namespace outrider::agent {

namespace v1 = outrider::v1;
using Reply = v1::CommandReply;
using update::Phase;

namespace {

std::int64_t nowMs() { return SystemClock().nowMs(); }

crypto::Sha256 toDigest(const std::string& bytes) {
  crypto::Sha256 d{};
  std::copy_n(reinterpret_cast<const std::uint8_t*>(bytes.data()), std::min(bytes.size(), d.size()), d.data());
  return d;
}

Reply failed(std::string message) {
  Reply r;
  r.set_kind(Reply::FAILED);
  r.set_message(std::move(message));
  return r;
}

std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : std::string(sep)) + s;
  return out;
}

}  // namespace

UpdateService::UpdateService(boost::asio::io_context& io, update::UpdateConfig cfg, UpdateHost host,
                             update::FreeSpaceFn free)
    : io_(io),
      cfg_(std::move(cfg)),
      host_(std::move(host)),
      store_(cfg_.dir, cfg_.reserveBytes, cfg_.maxPackageBytes, std::move(free)),
      timer_(io) {}

void UpdateService::start() {
  auto st = update::readState(update::stateFile(cfg_.dir));
  if (!st) {
    LOG_ERR("update: {}", st.error().message);
    return;
  }
  if (!*st) return;
  const auto& s = **st;
  LOG_NOTICE("update {}: found in phase {} ({} -> {})", s.commandId, update::phaseName(s.phase), s.fromVersion,
             s.toVersion);
  host_.adopt(s.commandId);
  active_ = true;
  activeId_ = s.commandId;
  arm();
}

void UpdateService::stop() {
  stopped_ = true;
  timer_.cancel();
}

void UpdateService::run(const std::string& id, const v1::UpdateCommand& cmd, CommandProcessor::DoneFn done,
                        std::string signedCommand) {
  using U = v1::UpdateCommand;
  auto answer = [&](Result<v1::UpdateResult> r, const char* what) {
    if (!r) {
      auto f = failed(r.error().message);
      LOG_WARN("update {}: {}", what, r.error().message);
      return done(std::move(f));
    }
    Reply ok;
    ok.set_kind(Reply::SUCCEEDED);
    ok.set_message(fmt::format("{} of {} bytes", r->have_bytes(), r->size()));
    *ok.mutable_update() = std::move(*r);
    done(std::move(ok));
  };
  switch (cmd.op()) {
    case U::OFFER:
      if (active_) return done(failed("an update is in progress (command " + activeId_ + "); try again after it"));
      return answer(store_.offer(toDigest(cmd.sha256()), cmd.size()), "offer");
    case U::CHUNK:
      return answer(store_.chunk(toDigest(cmd.sha256()), cmd.offset(), cmd.data()), "chunk");
    case U::INSTALL:
      return install(id, cmd, std::move(done), std::move(signedCommand));
    case U::STATUS:
      return status(std::move(done));
    default:
      return done(failed("unknown update operation"));
  }
}

void UpdateService::status(CommandProcessor::DoneFn done) {
  Reply r;
  r.set_kind(Reply::SUCCEEDED);
  for (const auto& f : {update::stateFile(cfg_.dir), update::lastFile(cfg_.dir)}) {
    auto st = update::readState(f);
    if (st && *st) {
      *r.mutable_update() = resultOf(**st);
      r.set_message(fmt::format("update {}: {} ({} -> {}){}", (*st)->commandId, update::phaseName((*st)->phase),
                                (*st)->fromVersion, (*st)->toVersion,
                                (*st)->reason.empty() ? "" : ": " + (*st)->reason));
      return done(std::move(r));
    }
  }
  r.mutable_update()->set_phase("none");
  r.set_message("no update has run on this node");
  done(std::move(r));
}

v1::UpdateResult UpdateService::resultOf(const update::UpdateState& s) const {
  v1::UpdateResult u;
  u.set_phase(std::string(update::phaseName(s.phase)));
  u.set_from_version(s.fromVersion);
  u.set_to_version(s.toVersion);
  u.set_reason(s.reason);
  std::string raw;
  for (std::size_t i = 0; i + 1 < s.sha256.size(); i += 2)
    raw.push_back(static_cast<char>(std::stoi(s.sha256.substr(i, 2), nullptr, 16)));
  u.set_sha256(raw);
  return u;
}

void UpdateService::install(const std::string& id, const v1::UpdateCommand& cmd, CommandProcessor::DoneFn done,
                            std::string signedCommand) {
  if (active_) return done(failed("an update is in progress (command " + activeId_ + "); try again after it"));
  auto digest = toDigest(cmd.sha256());
  auto deb = store_.package(digest);
  if (!deb) return done(failed(deb.error().message));
  auto info = host_.inspect(*deb);
  if (!info) return done(failed(info.error().message));
  if (info->name != cfg_.package)
    return done(failed(fmt::format("the package is '{}'; this node updates only '{}'", info->name, cfg_.package)));
  if (!host_.arch.empty() && info->arch != "all" && info->arch != host_.arch)
    return done(failed(fmt::format("the package is for {}, this node is {}", info->arch, host_.arch)));
  auto from = host_.installedVersion(cfg_.package);
  if (!from) return done(failed("cannot read the installed version: " + from.error().message));
  if (from->empty())
    return done(failed(fmt::format("{} is not installed as a package on this node; there is nothing to update",
                                   cfg_.package)));
  if (*from == info->version) return done(failed(fmt::format("{} {} is already installed", cfg_.package, *from)));

  update::UpdateState s;
  s.commandId = id;
  s.sha256 = crypto::hex(std::span<const std::uint8_t>(digest));
  s.packagePath = *deb;
  s.fromVersion = *from;
  s.toVersion = info->version;
  s.phase = Phase::requested;
  s.requestedAtMs = nowMs();
  s.healthDeadlineS = cmd.health_deadline_s() ? cmd.health_deadline_s()
                                              : static_cast<std::uint32_t>(cfg_.healthDeadline.count());
  for (const auto& h : host_.daemons()) s.baseline[h.name()] = v1::DaemonHealth::State_Name(h.state());
  s.signedCommand = std::move(signedCommand);

  active_ = true;  // from here on one update at a time
  activeId_ = id;
  host_.progress(id, fmt::format("received {} {} (installed: {}); running the pre-update hooks", cfg_.package,
                                 s.toVersion, s.fromVersion),
                 10);
  std::weak_ptr<int> life = alive_;
  host_.runHooks("pre-update",
                 {{"OUTRIDER_VERSION_FROM", s.fromVersion}, {"OUTRIDER_VERSION_TO", s.toVersion}, {"OUTRIDER_COMMAND_ID", id}},
                 [this, life, s, id, done = std::move(done)](Result<hooks::RunResult> r) mutable {
                   if (life.expired() || stopped_) return;
                   auto refuse = [&](std::string why) {
                     active_ = false;
                     activeId_.clear();
                     LOG_WARN("update {}: refused: {}", id, why);
                     done(failed(std::move(why)));
                   };
                   if (!r) return refuse("pre-update hooks: " + r.error().message + "; nothing was installed");
                   if (!r->ok()) return refuse("pre-update hooks refused the update: " + r->summary() + "; nothing was installed");
                   if (auto w = update::writeState(update::requestFile(cfg_.dir), s.encode()); !w)
                     return refuse("cannot write the update request: " + w.error().message);
                   if (host_.launch) {
                     if (auto l = host_.launch(); !l) {
                       std::error_code ec;
                       std::filesystem::remove(update::requestFile(cfg_.dir), ec);
                       return refuse("cannot start the updater: " + l.error().message);
                     }
                   }
                   LOG_NOTICE("update {}: installing {} {} (from {}); health deadline {} s", id, cfg_.package,
                              s.toVersion, s.fromVersion, s.healthDeadlineS);
                   host_.progress(id, fmt::format("{}; installing {} {}; the daemons restart, then health is checked "
                                                  "within {} s",
                                                  r->summary(), cfg_.package, s.toVersion, s.healthDeadlineS),
                                  30);
                   pending_[id] = std::move(done);
                   requestedAt_ = std::chrono::steady_clock::now();
                   arm();
                 });
}

void UpdateService::arm() {
  if (stopped_) return;
  timer_.expires_after(tickInterval);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopped_) return;
    tick();
  });
}

void UpdateService::tick() {
  if (busy_) return arm();
  auto st = update::readState(update::stateFile(cfg_.dir));
  if (!st) {
    LOG_WARN("update: {}; looking again", st.error().message);
    return arm();
  }
  if (!*st) {
    std::error_code ec;
    bool requested = std::filesystem::exists(update::requestFile(cfg_.dir), ec);
    if (requested && std::chrono::steady_clock::now() - requestedAt_ < std::chrono::minutes(2)) return arm();
    // The updater never took the request: nothing was installed.
    std::filesystem::remove(update::requestFile(cfg_.dir), ec);
    active_ = false;
    auto id = activeId_;
    activeId_.clear();
    reply(id, failed(requested ? "the updater did not start within 2 minutes (is outrider-update.path enabled?); "
                                 "nothing was installed"
                               : "the update request disappeared; nothing was installed"));
    return;
  }
  const auto& s = **st;
  if (s.commandId != activeId_) {
    host_.adopt(s.commandId);
    activeId_ = s.commandId;
  }
  if (update::finalPhase(s.phase)) return report(s);
  if (s.phase == Phase::awaitingHealth) {
    auto v = update::readVerdict(update::verdictFile(cfg_.dir));
    if (!v || !*v || (*v)->commandId != s.commandId) return checkHealth(s);
  }
  arm();
}

void checkNodeHealth(const UpdateHost& host, std::weak_ptr<int> life, std::map<std::string, std::string> baseline,
                     bool sinceUpdate, std::function<void(std::vector<std::string>)> done) {
  host.guests([&host, life, sinceUpdate, baseline = std::move(baseline), done = std::move(done)](
                  Result<std::map<std::string, std::string>> guests) mutable {
    if (life.expired()) return;
    update::HealthInputs in;
    in.hubConnected = host.hubConnected();
    for (const auto& h : host.daemons()) in.daemons[h.name()] = v1::DaemonHealth::State_Name(h.state());
    in.baseline = std::move(baseline);
    in.sinceUpdate = sinceUpdate;
    if (auto m = host.manifest()) {
      for (const auto& vm : m->vms())
        if (!vm.stopped()) in.guestsWanted.push_back("vm " + vm.name());
      for (const auto& c : m->containers())
        if (!c.stopped()) in.guestsWanted.push_back("container " + c.name());
    }
    in.guestsKnown = guests.ok();
    if (guests) in.guestsActual = std::move(*guests);
    done(update::healthProblems(in));
  });
}

void UpdateService::checkHealth(const update::UpdateState& s) {
  busy_ = true;
  std::weak_ptr<int> life = alive_;
  checkNodeHealth(host_, life, s.baseline, true, [this, s](std::vector<std::string> problems) {
    if (stopped_) return;
    busy_ = false;
    const auto now = nowMs();
    update::Verdict v;
    v.commandId = s.commandId;
    if (problems.empty()) {
      v.healthy = true;
      v.healthMs = static_cast<std::uint32_t>(std::max<std::int64_t>(0, now - s.restartedAtMs));
    } else if (now >= s.deadlineAtMs) {
      v.reason = join(problems, "; ");
    } else {
      return arm();
    }
    if (auto w = update::writeState(update::verdictFile(cfg_.dir), v.encode()); !w) {
      LOG_ERR("update {}: cannot write the verdict: {}", s.commandId, w.error().message);
      return arm();
    }
    if (v.healthy) {
      LOG_NOTICE("update {}: healthy {} ms after the restart", s.commandId, v.healthMs);
      host_.progress(s.commandId, fmt::format("running {} {}: healthy {:.1f} s after the restart; committing",
                                              cfg_.package, s.toVersion, v.healthMs / 1000.0),
                     90);
    } else {
      LOG_WARN("update {}: unhealthy at the deadline: {}", s.commandId, v.reason);
      host_.progress(s.commandId, "unhealthy at the deadline: " + v.reason + "; rolling back to " + s.fromVersion, 90);
    }
    arm();
  });
}

void UpdateService::report(const update::UpdateState& s) {
  Reply r;
  *r.mutable_update() = resultOf(s);
  if (s.phase == Phase::committed) {
    auto v = update::readVerdict(update::verdictFile(cfg_.dir));
    if (v && *v) r.mutable_update()->set_health_ms((*v)->healthMs);
    r.set_kind(Reply::SUCCEEDED);
    r.set_message(fmt::format("committed: {} {} (was {}), healthy {:.1f} s after the restart", cfg_.package,
                              s.toVersion, s.fromVersion, r.update().health_ms() / 1000.0));
  } else if (s.phase == Phase::rolledBack) {
    r.set_kind(Reply::FAILED);
    r.set_message(fmt::format("rolled back to {} {}: {}", cfg_.package, s.fromVersion, s.reason));
  } else {
    r.set_kind(Reply::FAILED);
    r.set_message("update failed: " + s.reason);
  }
  if (!s.postUpdate.empty()) r.set_message(r.message() + "; " + s.postUpdate);
  const char* event = s.phase == Phase::committed ? "boot-ok" : s.phase == Phase::rolledBack ? "rollback" : nullptr;
  if (!event) return finishReport(s, std::move(r));
  busy_ = true;
  std::weak_ptr<int> life = alive_;
  host_.runHooks(event,
                 {{"OUTRIDER_VERSION_FROM", s.fromVersion},
                  {"OUTRIDER_VERSION_TO", s.toVersion},
                  {"OUTRIDER_COMMAND_ID", s.commandId},
                  {"OUTRIDER_REASON", s.reason}},
                 [this, life, s, r = std::move(r)](Result<hooks::RunResult> h) mutable {
                   if (life.expired() || stopped_) return;
                   busy_ = false;
                   r.set_message(r.message() + "; " + (h ? h->summary() : "hooks: " + h.error().message));
                   finishReport(s, std::move(r));
                 });
}

void UpdateService::finishReport(const update::UpdateState& s, Reply r) {
  std::error_code ec;
  std::filesystem::rename(update::stateFile(cfg_.dir), update::lastFile(cfg_.dir), ec);
  if (ec) LOG_ERR("update {}: cannot archive the state: {}", s.commandId, ec.message());
  std::filesystem::remove(update::verdictFile(cfg_.dir), ec);
  (void)fsyncDir(cfg_.dir);
  // The installed package stays only while it is the one in use; the next update brings its own.
  store_.prune(std::nullopt);
  active_ = false;
  activeId_.clear();
  LOG_NOTICE("update {}: {}", s.commandId, r.message());
  reply(s.commandId, std::move(r));
}

void UpdateService::reply(const std::string& id, Reply r) {
  if (id.empty()) return;
  if (auto it = pending_.find(id); it != pending_.end()) {
    auto done = std::move(it->second);
    pending_.erase(it);
    return done(std::move(r));
  }
  host_.finishAdopted(id, std::move(r));
}

}  // namespace outrider::agent
