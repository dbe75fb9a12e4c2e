// The boot watcher (`outrider-agent boot-watch`, root) and the files it shares with the agent.
#include "outrider/agent/boot.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <thread>

#include "outrider/agent/update.hpp"
#include "outrider/common/atomic_file.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/log.hpp"
#include "outrider/hooks/runner.hpp"

namespace outrider::agent::boot {

namespace {

using update::record::escape;
using update::record::get;
using update::record::parseLines;
using update::record::toInt;

std::int64_t nowMs() { return SystemClock().nowMs(); }

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

}  // namespace

std::string Trial::encode() const {
  return fmt::format("format=1\nboot={}\nslot={}\nprevious={}\nrolled_back={}\nmessage={}\nstarted_at_ms={}\n"
                     "deadline_at_ms={}\n",
                     escape(bootId), escape(slot), escape(previous), rolledBack ? 1 : 0, escape(message), startedAtMs,
                     deadlineAtMs);
}

Result<Trial> Trial::decode(std::string_view text) {
  auto kv = parseLines(text);
  if (!kv) return kv.error();
  Trial t;
  t.bootId = get(*kv, "boot");
  t.slot = get(*kv, "slot");
  t.previous = get(*kv, "previous");
  t.rolledBack = get(*kv, "rolled_back") == "1";
  t.message = get(*kv, "message");
  auto a = toInt(*kv, "started_at_ms"), b = toInt(*kv, "deadline_at_ms");
  if (!a) return a.error();
  if (!b) return b.error();
  t.startedAtMs = *a;
  t.deadlineAtMs = *b;
  if (t.bootId.empty()) return Error{"boot missing"};
  if (!hooks::parseSlot(t.slot) || !hooks::parseSlot(t.previous)) return Error{"slot or previous is not a or b"};
  return t;
}

std::string Outcome::encode() const {
  return fmt::format("format=1\nboot={}\nkind={}\nslot={}\nmessage={}\nhooks={}\n", escape(bootId), escape(kind),
                     escape(slot), escape(message), escape(hooks));
}

Result<Outcome> Outcome::decode(std::string_view text) {
  auto kv = parseLines(text);
  if (!kv) return kv.error();
  Outcome o;
  o.bootId = get(*kv, "boot");
  o.kind = get(*kv, "kind");
  o.slot = get(*kv, "slot");
  o.message = get(*kv, "message");
  o.hooks = get(*kv, "hooks");
  if (o.kind != "committed" && o.kind != "unhealthy" && o.kind != "rolled-back" && o.kind != "failed")
    return Error{"unknown kind '" + o.kind + "'"};
  return o;
}

Result<std::optional<Trial>> readTrial(const fs::path& file) { return update::record::read<Trial>(file); }
Result<std::optional<Outcome>> readOutcome(const fs::path& file) { return update::record::read<Outcome>(file); }

Result<std::string> readBootId(const fs::path& file) {
  auto text = readFile(file, 256);
  if (!text) return text.error();
  auto id = trim(*text);
  if (id.empty()) return Error{file.string() + ": empty"};
  return id;
}

// ---------------------------------------------------------------- the watcher

namespace {

class Watcher {
 public:
  explicit Watcher(const WatchOptions& o) : o_(o), cfg_(o.cfg), dir_(o.cfg.dir) {}

  int run() {
    if (!cfg_.enabled()) {
      LOG_INFO("boot slots: off ([boot] backend is not set)");
      return 0;
    }
    if (auto s = makeDir(); !s) {
      LOG_ERR("boot slots: {}", s.error().message);
      return 1;
    }
    lock_ = ::open((dir_ / "watch.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_ < 0 || ::flock(lock_, LOCK_EX | LOCK_NB) != 0) {
      LOG_NOTICE("boot slots: another boot watcher is running; leaving it to that one");
      return 0;
    }
    auto slots = hooks::makeBootSlots(cfg_.slots);
    if (!slots) {
      LOG_ERR("boot slots: {}", slots.error().message);
      return 1;
    }
    slots_ = std::move(*slots);
    auto id = readBootId(cfg_.bootIdFile);
    if (!id) {
      LOG_ERR("boot slots: this boot's id: {}", id.error().message);
      return 1;
    }
    bootId_ = *id;
    if (cfg_.countBoots)
      if (auto done = count()) return *done;
    auto st = slots_->read();
    if (!st) {
      LOG_ERR("boot slots ({}): {}", slots_->name(), st.error().message);
      return 1;
    }
    std::error_code ec;
    if (!st->upgradeAvailable && !st->rolledBack) {
      LOG_INFO("boot slots ({}): slot {}, no trial", slots_->name(), hooks::slotName(st->current));
      fs::remove(trialFile(dir_), ec);
      return 0;
    }
    return watch(*st);
  }

  ~Watcher() {
    if (lock_ >= 0) ::close(lock_);
  }

 private:
  // STATE_DIR/boot, owned like STATE_DIR (the agent's user), so that the agent can write its verdict.
  Status makeDir() {
    std::error_code ec;
    if (fs::exists(dir_, ec)) return {};
    if (auto s = makeDirs(dir_, 0755); !s) return s;
    struct stat parent {};
    if (::stat(dir_.parent_path().c_str(), &parent) == 0 && ::geteuid() == 0 &&
        ::chown(dir_.c_str(), parent.st_uid, parent.st_gid) != 0)
      return errnoError("chown " + dir_.string(), errno);
    return {};
  }

  // count_boots: count this boot once. The boot is recorded as counted first: a watcher killed in
  // between counts one boot too few, never one too many.
  std::optional<int> count() {
    auto counted = readFile(countedFile(dir_), 256);
    const std::string mine = counted ? trim(*counted) : std::string();
    if (mine == bootId_) return std::nullopt;
    if (mine == bootId_ + " rolled-back") {
      LOG_NOTICE("boot slots ({}): this boot runs the slot that was rolled back; the next boot leaves it", slots_->name());
      return 0;
    }
    if (auto s = update::writeState(countedFile(dir_), bootId_ + "\n"); !s) {
      LOG_ERR("boot slots: {}", s.error().message);
      return 1;
    }
    auto a = slots_->bootAttempt();
    if (!a) {
      LOG_ERR("boot slots ({}): counting this boot: {}", slots_->name(), a.error().message);
      return 1;
    }
    if (a->outcome == hooks::BootOutcome::normal) return std::nullopt;
    LOG_NOTICE("boot slots ({}): {}", slots_->name(), a->message);
    if (a->outcome == hooks::BootOutcome::trial) return std::nullopt;
    // The count reached the limit and the previous slot is selected, but this boot still runs the failed
    // one: nothing to judge here. The rollback hooks run on the first boot back in the old slot.
    (void)update::writeState(countedFile(dir_), bootId_ + " rolled-back\n");
    reboot(a->message);
    return 0;
  }

  int watch(const hooks::BootState& st) {
    std::error_code ec;
    Trial t;
    auto kept = readTrial(trialFile(dir_));
    if (kept && *kept && (*kept)->bootId == bootId_) {
      t = **kept;  // a restarted watcher keeps the deadline
    } else {
      t.bootId = bootId_;
      t.slot = std::string(hooks::slotName(st.current));
      t.previous = std::string(hooks::slotName(st.previous));
      t.rolledBack = !st.upgradeAvailable;
      t.message = t.rolledBack ? fmt::format("back on slot {} after a failed trial of slot {}", t.slot, t.previous)
                               : fmt::format("trial boot of slot {} ({} of {})", t.slot, std::max(1u, st.bootCount),
                                             st.bootLimit);
      t.startedAtMs = nowMs();
      t.deadlineAtMs = t.startedAtMs + static_cast<std::int64_t>(cfg_.healthDeadline.count()) * 1000;
      fs::remove(verdictFile(dir_), ec);  // another boot's
      if (auto s = update::writeState(trialFile(dir_), t.encode()); !s) {
        LOG_ERR("boot slots: {}", s.error().message);
        return 1;
      }
    }
    LOG_NOTICE("boot slots ({}): {}; waiting up to {} s for the agent's health verdict", slots_->name(), t.message,
               std::max<std::int64_t>(0, (t.deadlineAtMs - nowMs()) / 1000));

    std::optional<update::Verdict> verdict;
    for (const auto giveUp = t.deadlineAtMs + o_.verdictGrace.count(); nowMs() < giveUp;) {
      auto v = update::readVerdict(verdictFile(dir_));
      if (v && *v && (*v)->commandId == verdictKey(bootId_)) {
        verdict = **v;
        break;
      }
      std::this_thread::sleep_for(o_.poll);
    }

    Outcome out{bootId_, "", t.slot, "", ""};
    const hooks::HookEnv env{{"OUTRIDER_SLOT", t.slot}, {"OUTRIDER_PREVIOUS_SLOT", t.previous}};
    if (t.rolledBack) {
      auto e = env;
      e["OUTRIDER_REASON"] = t.message;
      out.hooks = runHooks("rollback", e);
    }
    int rc = 1;
    if (verdict && verdict->healthy) {
      if (auto c = slots_->commit(); !c) {
        out.kind = "failed";
        out.message = fmt::format("slot {} was healthy, but committing it failed: {}", t.slot, c.error().message);
      } else {
        out.kind = t.rolledBack ? "rolled-back" : "committed";
        out.message = t.rolledBack ? t.message + fmt::format("; slot {} is healthy and stays", t.slot)
                                   : fmt::format("slot {} committed: healthy {:.1f} s after the check began", t.slot,
                                                 verdict->healthMs / 1000.0);
        out.hooks = join(out.hooks, runHooks("boot-ok", env));
        rc = 0;
      }
    } else {
      out.kind = "unhealthy";
      out.message = fmt::format("{}: {}", t.message,
                                verdict ? "unhealthy at the deadline: " + verdict->reason
                                        : fmt::format("no health verdict from the agent within {} s",
                                                      (t.deadlineAtMs - t.startedAtMs) / 1000));
      const bool rebooting = cfg_.countBoots && !cfg_.rebootCommand.empty() && !t.rolledBack;
      out.message += rebooting ? "; rebooting to count another trial boot"
                               : "; the slot stays uncommitted and the boot counter decides at the next boot";
    }
    LOG_NOTICE("boot slots ({}): {}", slots_->name(), out.message);
    if (auto s = update::writeState(lastFile(dir_), out.encode()); !s) LOG_ERR("boot slots: {}", s.error().message);
    fs::remove(trialFile(dir_), ec);
    fs::remove(verdictFile(dir_), ec);
    if (out.kind == "unhealthy" && cfg_.countBoots && !t.rolledBack) reboot(out.message);
    return rc;
  }

  static std::string join(std::string a, const std::string& b) {
    if (a.empty()) return b;
    if (b.empty()) return a;
    return a + "; " + b;
  }

  std::string runHooks(const char* event, const hooks::HookEnv& env) {
    if (o_.hooksDir.empty()) return {};
    hooks::HookRunner runner({.hooksDir = o_.hooksDir, .node = o_.node, .timeout = o_.hookTimeout});
    auto r = runner.run(event, env);
    if (!r) return std::string(event) + " hooks: " + r.error().message;
    if (r->hooks.empty() && r->skipped.empty()) return {};
    LOG_NOTICE("boot slots: {}", r->summary());
    return r->summary();
  }

  // pre-reboot hooks, then the reboot command; a failing pre-reboot hook stops the reboot.
  void reboot(const std::string& why) {
    if (cfg_.rebootCommand.empty()) {
      LOG_NOTICE("boot slots: no [boot] reboot_command; the selected slot boots at the next reboot");
      return;
    }
    if (!o_.hooksDir.empty()) {
      hooks::HookRunner runner({.hooksDir = o_.hooksDir, .node = o_.node, .timeout = o_.hookTimeout});
      auto r = runner.run("pre-reboot", {{"OUTRIDER_REASON", why}});
      if (r && r->aborted) {
        LOG_WARN("boot slots: a pre-reboot hook refused the reboot: {}", r->summary());
        return;
      }
    }
    LOG_NOTICE("boot slots: rebooting ({})", why);
    const auto timeout = std::chrono::minutes(2);
    auto r = update::runTool(cfg_.rebootCommand, timeout);
    if (!r) LOG_ERR("boot slots: reboot command: {}", r.error().message);
    else if (r->exitCode != 0) LOG_ERR("boot slots: reboot command: {}", hooks::detail::describe(*r, timeout));
  }

  const WatchOptions& o_;
  const BootConfig& cfg_;
  fs::path dir_;
  int lock_ = -1;
  std::unique_ptr<hooks::BootSlots> slots_;
  std::string bootId_;
};

}  // namespace

int runBootWatch(const WatchOptions& opts) { return Watcher(opts).run(); }

}  // namespace outrider::agent::boot
