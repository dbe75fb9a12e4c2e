#include "outrider/hooks/runner.hpp"

#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>

#include "outrider/hooks/spawn.hpp"

namespace outrider::hooks {
namespace fs = std::filesystem;
using std::chrono::milliseconds;

namespace {

constexpr std::array<std::pair<Event, std::string_view>, 7> kEvents{{
    {Event::provisioned, "provisioned"},
    {Event::preUpdate, "pre-update"},
    {Event::postUpdate, "post-update"},
    {Event::bootOk, "boot-ok"},
    {Event::rollback, "rollback"},
    {Event::preReboot, "pre-reboot"},
    {Event::factoryReset, "factory-reset"},
}};

// run-parts' default (LANANA-style) names: no dots, so no *.dpkg-old, *.bak, hidden files or editors' backups.
bool validHookName(std::string_view n) {
  if (n.empty() || n.size() > 255) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

bool validVarName(std::string_view n) {
  constexpr std::string_view prefix = "OUTRIDER_";
  if (n.size() <= prefix.size() || n.size() > 128 || n.substr(0, prefix.size()) != prefix) return false;
  return std::all_of(n.begin() + prefix.size(), n.end(),
                     [](char c) { return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; });
}

std::string fileTypeName(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m) || S_ISBLK(m)) return "a device";
  return "not a regular file";
}

}  // namespace

std::string_view eventName(Event e) {
  for (const auto& [ev, name] : kEvents)
    if (ev == e) return name;
  return "unknown";
}

Result<Event> parseEvent(std::string_view name) {
  for (const auto& [ev, n] : kEvents)
    if (n == name) return ev;
  std::string valid;
  for (const auto& [ev, n] : kEvents) valid += (valid.empty() ? "" : ", ") + std::string(n);
  std::string shown(name.substr(0, 64));
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return Error{"unknown hook event \"" + shown + "\" (valid: " + valid + ")"};
}

bool isPreEvent(Event e) { return e == Event::preUpdate || e == Event::preReboot; }

Status validateHookEnv(const HookEnv& env) {
  if (env.size() > 64) return Error{"too many hook variables (" + std::to_string(env.size()) + ", at most 64)"};
  for (const auto& [k, v] : env) {
    if (!validVarName(k)) {
      std::string shown = k.substr(0, 64);
      for (char& c : shown)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
      return Error{"hook variable \"" + shown + "\": names must be OUTRIDER_ followed by [A-Z0-9_]"};
    }
    if (k == "OUTRIDER_EVENT" || k == "OUTRIDER_NODE" || k == "OUTRIDER_HOOK")
      return Error{"hook variable " + k + " is set by the runner, not the caller"};
    if (v.size() > 4096) return Error{"hook variable " + k + ": value longer than 4096 bytes"};
    if (v.find('\0') != std::string::npos || v.find('\n') != std::string::npos)
      return Error{"hook variable " + k + ": value contains NUL or a newline"};
  }
  return {};
}

std::string HookResult::status() const {
  if (!error.empty()) return "cannot run: " + error;
  detail::SpawnResult r;
  r.exitCode = exitCode;
  r.signal = signal;
  r.timedOut = timedOut;
  r.cancelled = cancelled;
  return detail::describe(r, timeout);
}

bool RunResult::ok() const {
  if (aborted) return false;
  return std::all_of(hooks.begin(), hooks.end(), [](const HookResult& h) { return h.ok(); });
}

std::string RunResult::summary() const {
  std::string s = std::string(eventName(event)) + ": " + std::to_string(hooks.size()) + " ran";
  if (!skipped.empty()) s += ", " + std::to_string(skipped.size()) + " skipped";
  if (aborted) return s + ", " + abortReason;
  std::string failed;
  std::size_t nFailed = 0;
  for (const auto& h : hooks)
    if (!h.ok()) {
      ++nFailed;
      if (failed.size() < 200) failed += (failed.empty() ? "" : "; ") + h.name + ": " + h.status();
    }
  if (nFailed == 0) return s + ", ok";
  return s + ", " + std::to_string(nFailed) + " failed (" + failed + ")";
}

HookRunner::HookRunner(RunnerOptions opts) : opts_(std::move(opts)) {
  stopFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  // Without it stop() cannot interrupt a hook; hooks still end at their timeout.
}

HookRunner::~HookRunner() {
  stop();
  pool_.join();
  if (stopFd_ >= 0) ::close(stopFd_);
}

bool HookRunner::stopRequested() const {
  if (stopFd_ < 0) return false;
  pollfd pf{stopFd_, POLLIN, 0};
  return ::poll(&pf, 1, 0) == 1;
}

void HookRunner::stop() {
  if (stopFd_ < 0) return;
  std::uint64_t one = 1;
  while (::write(stopFd_, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

Result<RunResult> HookRunner::run(std::string_view eventText, const HookEnv& env) {
  auto ev = parseEvent(eventText);
  if (!ev) return ev.error();
  if (auto s = validateHookEnv(env); !s) return s.error();

  RunResult result;
  result.event = *ev;
  const std::string event(eventName(*ev));
  const fs::path dir = opts_.hooksDir / (event + ".d");

  std::error_code ec;
  auto st = fs::status(dir, ec);
  if (ec || st.type() == fs::file_type::not_found) {
    if (ec && ec != std::errc::no_such_file_or_directory) return Error{"hooks " + dir.string() + ": " + ec.message()};
    return result;  // no hooks for this event
  }
  if (st.type() != fs::file_type::directory) return Error{"hooks " + dir.string() + ": not a directory"};

  std::vector<std::string> names;
  fs::directory_iterator it(dir, ec);
  if (ec) return Error{"hooks " + dir.string() + ": " + ec.message(), ec.value()};
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) return Error{"hooks " + dir.string() + ": " + ec.message(), ec.value()};
    names.push_back(it->path().filename().string());
  }
  if (ec) return Error{"hooks " + dir.string() + ": " + ec.message(), ec.value()};
  std::sort(names.begin(), names.end());  // byte order, as run-parts in the C locale

  std::vector<std::string> baseEnv{std::string("PATH=") + detail::kMinimalPath, "OUTRIDER_EVENT=" + event,
                                   "OUTRIDER_NODE=" + opts_.node};
  for (const auto& [k, v] : env) baseEnv.push_back(k + "=" + v);

  bool stopped = false;
  for (const auto& name : names) {
    if (!validHookName(name)) {
      result.skipped.push_back({name, "name does not match [A-Za-z0-9_-]+"});
      continue;
    }
    fs::path path = dir / name;
    struct stat sb {};
    if (::stat(path.c_str(), &sb) != 0) {  // follows symlinks, as run-parts does
      result.skipped.push_back({name, errno == ENOENT ? "dangling symlink or removed" : std::string("stat: ") + ::strerror(errno)});
      continue;
    }
    if (!S_ISREG(sb.st_mode)) {
      result.skipped.push_back({name, fileTypeName(sb.st_mode)});
      continue;
    }
    if (::access(path.c_str(), X_OK) != 0) {
      result.skipped.push_back({name, "not executable"});
      continue;
    }
    if (stopped || stopRequested()) {
      result.skipped.push_back({name, "runner stopped"});
      continue;
    }

    detail::SpawnOptions so;
    so.program = path;
    so.env = baseEnv;
    so.env.push_back("OUTRIDER_HOOK=" + name);
    so.mergeStderr = true;
    so.timeout = opts_.timeout;
    so.killGrace = opts_.killGrace;
    so.outputCap = opts_.outputCap;
    so.cancelFd = stopFd_;

    HookResult hr;
    hr.name = name;
    hr.timeout = opts_.timeout;
    auto r = detail::spawnAndWait(so);
    if (!r) {
      hr.error = r.error().code != 0 ? ::strerror(r.error().code) : r.error().message;
    } else {
      hr.exitCode = r->exitCode;
      hr.signal = r->signal;
      hr.timedOut = r->timedOut;
      hr.cancelled = r->cancelled;
      hr.duration = r->duration;
      hr.output = std::move(r->output);
      hr.truncated = r->truncated;
      if (hr.truncated) hr.output += "\n[output truncated at " + std::to_string(opts_.outputCap) + " bytes]\n";
      if (r->outputHeld) hr.output += "\n[a process outside the hook's group kept its output open]\n";
    }
    const bool failed = !hr.ok();
    if (hr.cancelled) stopped = true;
    result.hooks.push_back(std::move(hr));
    if (failed && isPreEvent(*ev)) {
      result.aborted = true;
      result.abortReason = "aborted by " + name + ": " + result.hooks.back().status();
      break;
    }
  }
  return result;
}

}  // namespace outrider::hooks
