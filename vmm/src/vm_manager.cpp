#include "outrider/vmm/vm_manager.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <fstream>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/names.hpp"

extern char** environ;

namespace outrider::vmm {

namespace fs = std::filesystem;
using v1::LocalError;

namespace {

constexpr std::string_view kStateMagic = "OUTRIDER-VMS 1 ";

std::int64_t wallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool sameSpec(const v1::VmSpec& a, const v1::VmSpec& b) {
  return a.SerializeAsString() == b.SerializeAsString();
}

// qemu-img through fork/exec: a plain local file operation that works the same whatever libvirt
// connection (or none) vmm has, and needs no storage pool defined on the host.
Status runQemuImg(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return errnoError("run qemu-img", rc);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return errnoError("wait for qemu-img", errno);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return Error{fmt::format("qemu-img {} failed (status {})", args.size() > 1 ? args[1] : "", status)};
  return {};
}

std::string overlayName(const v1::VmDisk& d, int i) {
  // The overlay belongs to one base/format/size: a changed disk gets a new overlay, the old one stays
  // until the VM is deleted (a running guest may still use it).
  return fmt::format("disk{}-{}.qcow2", i,
                     fnv1aHex(d.base_image() + '\0' + d.format() + '\0' + std::to_string(d.size_mib())).substr(0, 8));
}

Result<std::string> tailOf(const fs::path& p, std::uint64_t maxBytes, bool& truncated) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return std::string();
  in.seekg(0, std::ios::end);
  auto size = static_cast<std::uint64_t>(in.tellg());
  std::uint64_t off = size > maxBytes ? size - maxBytes : 0;
  truncated = off > 0;
  in.seekg(static_cast<std::streamoff>(off));
  std::string data(size - off, '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<std::size_t>(in.gcount()));
  return data;
}

}  // namespace

std::string_view stepName(StepKind k) {
  switch (k) {
    case StepKind::remove: return "remove";
    case StepKind::define: return "define";
    case StepKind::redefine: return "redefine";
    case StepKind::start: return "start";
    case StepKind::stop: return "stop";
  }
  return "?";
}

std::vector<Step> planReconcile(const std::map<std::string, DesiredVm>& desired,
                                const std::vector<DomainRecord>& actual, std::string_view accel,
                                const std::set<std::string>& stopping) {
  std::vector<Step> removes, defines, runs;
  std::map<std::string, const DomainRecord*> byName;
  for (const auto& r : actual) {
    if (!r.managed) continue;
    byName[r.name] = &r;
    if (!desired.count(r.name) && !stopping.count(r.name)) removes.push_back({StepKind::remove, r.name});
  }
  for (const auto& [name, vm] : desired) {
    auto it = byName.find(name);
    if (it == byName.end()) {
      defines.push_back({StepKind::define, name});
      if (vm.running) runs.push_back({StepKind::start, name});
      continue;
    }
    const DomainRecord& r = *it->second;
    if (r.specHash != specHash(vm.spec, accel)) defines.push_back({StepKind::redefine, name});
    if (vm.running && !r.active && !stopping.count(name)) runs.push_back({StepKind::start, name});
    if (!vm.running && r.active && !stopping.count(name)) runs.push_back({StepKind::stop, name});
  }
  std::vector<Step> out = std::move(removes);
  out.insert(out.end(), defines.begin(), defines.end());
  out.insert(out.end(), runs.begin(), runs.end());
  return out;
}

VmManager::VmManager(VmBackend& backend, ManagerOptions opts, HostInfo host, Publish publish, Clock clock)
    : backend_(backend), opts_(std::move(opts)), host_(std::move(host)), publish_(std::move(publish)),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::steady_clock::now(); })) {}

fs::path VmManager::consoleLog(const std::string& name) const { return opts_.logDir / (name + ".console.log"); }
fs::path VmManager::diskDir(const std::string& name) const { return opts_.stateDir / "disks" / name; }

// ---------------------------------------------------------------- persistence

Status VmManager::persist() {
  v1::VmApplyRequest applied;
  applied.set_manifest_version(manifestVersion_);
  v1::VmList running;
  for (const auto& [name, vm] : desired_) {
    *applied.add_vms() = vm.spec;
    auto* i = running.add_vms();
    i->set_name(name);
    i->set_desired_running(vm.running);
  }
  std::string a = applied.SerializeAsString(), r = running.SerializeAsString();
  std::string payload = fmt::format("{:016x}", a.size()) + a + r;
  std::string data = std::string(kStateMagic) + fnv1aHex(payload) + "\n" + payload;
  if (auto st = makeDirs(opts_.stateDir, 0755); !st) return st;
  if (auto st = writeFileAtomic(stateFile(), data, 0600); !st)
    return Error{"save VM desired state: " + st.error().message, static_cast<int>(LocalError::INTERNAL)};
  return {};
}

Status VmManager::load() {
  std::error_code ec;
  if (!fs::exists(stateFile(), ec)) return {};
  auto data = readFile(stateFile());
  if (!data) return data.error();
  const std::string& d = *data;
  auto nl = d.find('\n');
  if (d.rfind(kStateMagic, 0) != 0 || nl == std::string::npos || nl != kStateMagic.size() + 16)
    return Error{stateFile().string() + ": not a VM state file"};
  std::string sum = d.substr(kStateMagic.size(), 16);
  std::string payload = d.substr(nl + 1);
  if (fnv1aHex(payload) != sum || payload.size() < 16)
    return Error{stateFile().string() + ": checksum mismatch (torn or corrupt), ignoring its content"};
  std::size_t alen = std::stoull(payload.substr(0, 16), nullptr, 16);
  if (alen > payload.size() - 16) return Error{stateFile().string() + ": bad length"};
  v1::VmApplyRequest applied;
  v1::VmList running;
  if (!applied.ParseFromString(payload.substr(16, alen)) || !running.ParseFromString(payload.substr(16 + alen)))
    return Error{stateFile().string() + ": does not parse"};
  std::map<std::string, bool> run;
  for (const auto& i : running.vms()) run[i.name()] = i.desired_running();
  desired_.clear();
  for (const auto& s : applied.vms()) {
    DesiredVm vm{s, run.count(s.name()) ? run[s.name()] : !s.stopped()};
    desired_[s.name()] = vm;
    known_.insert(s.name());
  }
  manifestVersion_ = applied.manifest_version();
  return {};
}

// ---------------------------------------------------------------- apply

Result<v1::ApplyResult> VmManager::apply(const v1::VmApplyRequest& req) {
  std::set<std::string> seen;
  for (const auto& s : req.vms()) {
    if (!seen.insert(s.name()).second)
      return vmError(LocalError::CONFLICT,
                     fmt::format("VM name '{}' appears twice in the request; nothing was changed", xmlEscape(s.name())));
  }
  v1::ApplyResult out;
  out.set_manifest_version(req.manifest_version());
  std::map<std::string, DesiredVm> next;
  std::map<std::string, std::string> itemError;
  std::uint64_t memSum = 0;
  for (const auto& s : req.vms()) {
    Status st = validateSpec(s, host_, opts_.limits);
    if (st) st = admitMemory(s, memSum, host_, opts_.limits);
    if (!st) {
      itemError[s.name()] = st.error().message;
      // A bad item changes nothing: the VM keeps its previous desired state, if it had one.
      if (auto it = desired_.find(s.name()); it != desired_.end()) {
        next[s.name()] = it->second;
        memSum += it->second.spec.memory_mib();
      }
      continue;
    }
    memSum += s.memory_mib();
    DesiredVm vm{s, !s.stopped()};
    // An operator's START/STOP holds until the manifest changes this VM; a changed VM is not held back
    // by how its previous spec went off at boot.
    if (auto it = desired_.find(s.name()); it != desired_.end() && sameSpec(it->second.spec, s))
      vm.running = it->second.running;
    else
      starts_.erase(s.name());
    next[s.name()] = std::move(vm);
  }
  std::set<std::string> removed;
  for (const auto& [name, vm] : desired_)
    if (!next.count(name)) removed.insert(name);
  auto previous = std::move(desired_);
  auto previousVersion = manifestVersion_;
  desired_ = std::move(next);
  manifestVersion_ = req.manifest_version();
  if (auto st = persist(); !st) {
    desired_ = std::move(previous);
    manifestVersion_ = previousVersion;
    return vmError(LocalError::INTERNAL, st.error().message);
  }
  for (const auto& [name, vm] : desired_) known_.insert(name);

  auto done = reconcile("apply");
  auto addResult = [&out](const std::string& name, bool ok, std::string action, std::string error) {
    auto* r = out.add_results();
    r->set_kind("vm");
    r->set_name(name);
    r->set_ok(ok);
    r->set_action(std::move(action));
    r->set_error(std::move(error));
  };
  for (const auto& s : req.vms()) {
    if (auto it = itemError.find(s.name()); it != itemError.end()) {
      addResult(s.name(), false, "refused", it->second);
      continue;
    }
    std::string what = done.count(s.name()) ? done[s.name()] : "";
    if (what.rfind("error: ", 0) == 0)
      addResult(s.name(), false, "failed", what.substr(7));
    else
      addResult(s.name(), true, what.empty() ? "unchanged" : what, "");
  }
  for (const auto& name : removed) {
    std::string what = done.count(name) ? done[name] : "removed";
    if (what.rfind("error: ", 0) == 0)
      addResult(name, false, "failed", what.substr(7));
    else
      addResult(name, true, what.empty() ? "removed" : what, "");
  }
  return out;
}

// ---------------------------------------------------------------- reconcile

Status VmManager::defineVm(const DesiredVm& vm) {
  const auto& s = vm.spec;
  DomainParams p;
  p.accel = opts_.accel;
  p.hash = specHash(s, opts_.accel);
  p.instance = opts_.instance;
  p.consoleLog = consoleLog(s.name());
  // A redefinition must carry the domain's UUID, or libvirt takes it for a second domain of that name.
  if (auto rec = backend_.lookup(s.name()); rec && *rec) p.uuid = (*rec)->uuid;
  if (auto st = makeDirs(opts_.logDir, 0755); !st) return st;
  if (s.disks_size() > 0) {
    if (auto st = makeDirs(diskDir(s.name()), 0755); !st) return st;
  }
  for (int i = 0; i < s.disks_size(); ++i) {
    const auto& d = s.disks(i);
    fs::path overlay = diskDir(s.name()) / overlayName(d, i);
    std::error_code ec;
    if (!fs::exists(overlay, ec)) {
      fs::path tmp = overlay;
      tmp += ".tmp";
      std::vector<std::string> args{"qemu-img", "create", "-q", "-f", "qcow2", "-b", d.base_image(),
                                    "-F", d.format().empty() ? "qcow2" : d.format(), tmp.string()};
      if (d.size_mib() > 0) args.push_back(std::to_string(d.size_mib()) + "M");
      if (auto st = runQemuImg(args); !st) {
        fs::remove(tmp, ec);
        return Error{fmt::format("create overlay for disk {}: {}", i, st.error().message)};
      }
      // Only a complete overlay gets its final name, so a crash mid-way never leaves a half-made disk.
      fs::rename(tmp, overlay, ec);
      if (ec) return Error{fmt::format("rename overlay {}: {}", overlay.string(), ec.message())};
      (void)fsyncDir(overlay.parent_path());
    }
    p.overlays.push_back(overlay);
  }
  if (auto st = backend_.define(domainXml(s, host_, p)); !st) return st;
  if (auto st = backend_.setAutostart(s.name(), s.autostart()); !st)
    LOG_WARN("VM {}: {}, ignoring", s.name(), st.error().message);
  return {};
}

std::map<std::string, std::string> VmManager::reconcile(std::string_view why) {
  std::map<std::string, std::string> done;
  if (!backend_.connected()) return done;
  auto actual = backend_.listManaged();
  if (!actual) {
    LOG_WARN("reconcile ({}): {}", why, actual.error().message);
    return done;
  }
  std::set<std::string> stopping;
  for (const auto& [n, p] : stopping_) stopping.insert(n);
  auto steps = planReconcile(desired_, *actual, opts_.accel, stopping);
  if (!steps.empty()) LOG_INFO("reconcile ({}): {} step(s)", why, steps.size());
  // A name can be taken by a domain vmm does not manage: never touch it, say so.
  std::set<std::string> managedNames;
  for (const auto& r : *actual) managedNames.insert(r.name), known_.insert(r.name);
  auto note = [&done](const std::string& name, std::string what) {
    auto& d = done[name];
    if (d.rfind("error: ", 0) == 0) return;
    d = d.empty() || what.rfind("error: ", 0) == 0 ? std::move(what) : d + ", " + what;
  };
  std::set<std::string> failed;
  for (const auto& step : steps) {
    const std::string& name = step.name;
    if (failed.count(name)) continue;
    Status st;
    std::string what;
    switch (step.kind) {
      case StepKind::remove:
        beginStop(name, opts_.stopTimeout, true, {});
        what = "removed";
        break;
      case StepKind::define:
      case StepKind::redefine: {
        if (step.kind == StepKind::define) {
          auto other = backend_.lookup(name);
          if (other && *other && !(*other)->managed) {
            st = vmError(LocalError::CONFLICT,
                         fmt::format("a domain named {} exists that outrider does not manage; leaving it alone", name));
            break;
          }
        }
        st = defineVm(desired_.at(name));
        bool active = false;
        for (const auto& r : *actual)
          if (r.name == name) active = r.active;
        what = step.kind == StepKind::define ? "defined" : active ? "redefined (applies at next boot)" : "redefined";
        break;
      }
      case StepKind::start: {
        const auto& h = starts_[name];
        if (const auto now = clock_(); now < h.notBefore) {
          const auto wait = std::chrono::ceil<std::chrono::seconds>(h.notBefore - now).count();
          lastError_[name] = fmt::format("it went off {} time(s) in a row within a minute of starting; starting it again in {}s",
                                         h.quickStops, wait);
          note(name, fmt::format("starting again in {}s", wait));
          continue;
        }
        st = backend_.start(name);
        if (st) noteStarted(name);
        what = "started";
        break;
      }
      case StepKind::stop:
        beginStop(name, opts_.stopTimeout, false, {});
        what = "stopping";
        break;
    }
    if (!st) {
      LOG_WARN("VM {}: {} failed: {}", name, stepName(step.kind), st.error().message);
      lastError_[name] = st.error().message;
      failed.insert(name);
      note(name, "error: " + st.error().message);
    } else {
      if (step.kind != StepKind::remove) lastError_.erase(name);
      note(name, what);
    }
  }
  if (auto now = backend_.listManaged(); now) refreshRunning(*now);
  return done;
}

void VmManager::refreshRunning(const std::vector<DomainRecord>& recs) {
  std::size_t n = 0;
  for (const auto& r : recs)
    if (r.active) ++n;
  running_ = n;
}

// ---------------------------------------------------------------- stops

void VmManager::beginStop(const std::string& name, std::chrono::milliseconds timeout, bool thenRemove, Done done) {
  auto rec = backend_.lookup(name);
  bool active = rec && *rec && (*rec)->active;
  auto& p = stopping_[name];
  p.thenRemove = p.thenRemove || thenRemove;
  if (done) p.waiters.push_back(std::move(done));
  if (!active) {
    finishStop(name);
    return;
  }
  if (p.waiters.size() <= 1 && p.deadline == std::chrono::steady_clock::time_point{}) {
    p.deadline = clock_() + timeout;
    if (auto st = backend_.shutdown(name); !st) {
      LOG_WARN("VM {}: {}; destroying it", name, st.error().message);
      p.deadline = clock_();
    }
  }
  if (clock_() >= p.deadline) tick();
}

void VmManager::finishStop(const std::string& name) {
  auto it = stopping_.find(name);
  if (it == stopping_.end()) return;
  PendingStop p = std::move(it->second);
  stopping_.erase(it);
  Status st;
  if (p.thenRemove) st = removeVm(name);
  if (st && !p.thenRemove) {
    // Once the guest is off nothing else has its disks open: not yet needed here, kept for symmetry.
  }
  for (auto& w : p.waiters) {
    if (!st) {
      w(vmError(LocalError::INTERNAL, st.error().message));
    } else if (p.thenRemove) {
      v1::VmInfo gone;
      gone.set_name(name);
      gone.set_state("deleted");
      gone.set_accel(opts_.accel);
      w(gone);
    } else {
      w(infoNow(name));
    }
  }
  if (auto now = backend_.listManaged(); now) refreshRunning(*now);
}

Status VmManager::removeVm(const std::string& name) {
  auto rec = backend_.lookup(name);
  if (rec && *rec && (*rec)->managed) {
    if ((*rec)->active) (void)backend_.destroy(name);
    if (auto st = backend_.undefine(name); !st) {
      lastError_[name] = st.error().message;
      return st;
    }
  }
  std::error_code ec;
  fs::remove_all(diskDir(name), ec);
  fs::remove(consoleLog(name), ec);
  fs::remove(fs::path(consoleLog(name).string() + ".1"), ec);
  lastError_.erase(name);
  stateSince_.erase(name);
  LOG_INFO("VM {}: removed (domain undefined, overlays and console logs deleted)", name);
  return {};
}

void VmManager::tick() {
  auto now = clock_();
  std::vector<std::string> due, gone;
  for (const auto& [name, p] : stopping_) {
    if (now >= p.deadline) {
      due.push_back(name);
      continue;
    }
    // In case the stopped event was missed (e.g. across a reconnect).
    auto rec = backend_.lookup(name);
    if (rec && (!*rec || !(*rec)->active)) gone.push_back(name);
  }
  for (const auto& name : due) {
    LOG_NOTICE("VM {}: did not power off in time, destroying it", name);
    if (auto st = backend_.destroy(name); !st) {
      auto rec = backend_.lookup(name);
      if (rec && *rec && (*rec)->active) {
        lastError_[name] = st.error().message;
        LOG_WARN("VM {}: {}", name, st.error().message);
      }
    }
    finishStop(name);
  }
  for (const auto& name : gone) finishStop(name);
  for (const auto& [name, vm] : desired_)
    trimConsole(name, vm.spec.console_log_max_bytes() ? vm.spec.console_log_max_bytes() : opts_.consoleMaxBytes);
}

void VmManager::trimConsole(const std::string& name, std::uint64_t cap) {
  fs::path log = consoleLog(name);
  std::error_code ec;
  auto size = fs::file_size(log, ec);
  if (ec || size <= cap) return;
  // Keep the newest half in <name>.console.log.1, then empty the live file (the writer appends, so it
  // carries on at the new end).
  bool truncated = false;
  auto tail = tailOf(log, cap / 2, truncated);
  if (tail) (void)writeFileAtomic(fs::path(log.string() + ".1"), *tail, 0640);
  if (::truncate(log.c_str(), 0) != 0) LOG_WARN("VM {}: truncate {}: {}, ignoring", name, log.string(), std::strerror(errno));
}

// ---------------------------------------------------------------- events

void VmManager::noteStarted(const std::string& name) {
  auto& h = starts_[name];
  h.startedAt = clock_();
  h.notBefore = {};
}

void VmManager::onEvent(const LifecycleEvent& ev) {
  if (!desired_.count(ev.name) && !known_.count(ev.name) && !stopping_.count(ev.name)) return;
  if (ev.state == "shutoff" && !stopping_.count(ev.name)) {
    // Off by itself (not a stop of ours): when that came soon after its start, the next start waits.
    auto& h = starts_[ev.name];
    const auto now = clock_();
    if (h.startedAt != std::chrono::steady_clock::time_point{} && now - h.startedAt < kBackoffReset) {
      h.notBefore = now + restartDelay(h.quickStops++);
      LOG_NOTICE("VM {}: went off {} time(s) in a row within a minute of starting; the next start waits", ev.name,
                 h.quickStops);
    } else {
      h.quickStops = 0;
      h.notBefore = {};
    }
  }
  stateSince_[ev.name] = wallMs();
  publish_("vm.state", ev.name, ev.state + " (" + ev.reason + ")");
  if (ev.state == "shutoff" || ev.state == "undefined") {
    if (stopping_.count(ev.name)) finishStop(ev.name);
  }
  if (ev.state == "running" && ev.reason == "booted") ++running_;
  if (ev.state == "shutoff" && running_ > 0) --running_;
}

// ---------------------------------------------------------------- actions, lists

v1::VmInfo VmManager::info(const std::string& name, const std::optional<DomainRecord>& rec) {
  v1::VmInfo i;
  i.set_name(name);
  i.set_accel(opts_.accel);
  auto d = desired_.find(name);
  if (d != desired_.end()) {
    i.set_vcpus(d->second.spec.vcpus());
    i.set_memory_mib(d->second.spec.memory_mib());
    i.set_arch(effectiveArch(d->second.spec, host_));
    i.set_desired_running(d->second.running);
  }
  if (rec) {
    i.set_state(rec->state);
    i.set_uuid(rec->uuid);
    i.set_managed(rec->managed);
    if (d == desired_.end()) {
      i.set_vcpus(rec->vcpus);
      i.set_memory_mib(rec->memoryMib);
    }
  } else {
    i.set_state("undefined");
    i.set_managed(d != desired_.end());
  }
  if (auto s = stateSince_.find(name); s != stateSince_.end()) i.set_state_since_ms(s->second);
  if (auto e = lastError_.find(name); e != lastError_.end()) i.set_last_error(e->second);
  return i;
}

Result<v1::VmInfo> VmManager::infoNow(const std::string& name) {
  auto rec = backend_.lookup(name);
  if (!rec) return vmError(LocalError::INTERNAL, rec.error().message);
  return info(name, *rec);
}

void VmManager::action(const v1::VmActionRequest& req, Done done) {
  const std::string& name = req.name();
  if (!validWorkloadName(name)) {
    done(vmError(LocalError::BAD_REQUEST, fmt::format("VM name '{}' is invalid", xmlEscape(name.substr(0, 80)))));
    return;
  }
  if (!backend_.connected()) {
    done(vmError(LocalError::INTERNAL, "not connected to libvirt; try again later"));
    return;
  }
  auto rec = backend_.lookup(name);
  if (!rec) {
    done(vmError(LocalError::INTERNAL, rec.error().message));
    return;
  }
  bool inDesired = desired_.count(name) > 0;
  bool managed = *rec && (*rec)->managed;
  if (!inDesired && !managed) {
    done(vmError(LocalError::NOT_FOUND, fmt::format("no VM named {} is managed here", name)));
    return;
  }
  if (*rec && !managed) {
    // Same name as a domain outrider did not define: never touch that domain.
    if (req.action() == v1::VmActionRequest::DELETE) {
      desired_.erase(name);
      if (auto st = persist(); !st) return done(vmError(LocalError::INTERNAL, st.error().message));
      v1::VmInfo gone;
      gone.set_name(name);
      gone.set_state("deleted");
      return done(gone);
    }
    return done(vmError(LocalError::CONFLICT,
                        fmt::format("domain {} exists but is not managed by outrider; leaving it alone", name)));
  }
  bool active = *rec && (*rec)->active;
  auto timeout = req.timeout_s() ? std::chrono::milliseconds(std::chrono::seconds(req.timeout_s())) : opts_.stopTimeout;
  auto setRunning = [&](bool run) -> Status {
    auto it = desired_.find(name);
    if (it == desired_.end() || it->second.running == run) return {};
    it->second.running = run;
    if (auto st = persist(); !st) {
      it->second.running = !run;
      return st;
    }
    return {};
  };
  switch (req.action()) {
    case v1::VmActionRequest::START: {
      if (active) {
        done(vmError(LocalError::CONFLICT, fmt::format("VM {} is already running", name)));
        return;
      }
      if (!*rec) {
        done(vmError(LocalError::CONFLICT, fmt::format("VM {} is not defined yet (see its last error)", name)));
        return;
      }
      if (auto st = setRunning(true); !st) return done(vmError(LocalError::INTERNAL, st.error().message));
      if (auto st = backend_.start(name); !st) {
        lastError_[name] = st.error().message;
        return done(vmError(LocalError::INTERNAL, st.error().message));
      }
      starts_.erase(name);  // an operator's START is not held back, and starts the count again
      noteStarted(name);
      lastError_.erase(name);
      done(infoNow(name));
      return;
    }
    case v1::VmActionRequest::STOP: {
      if (!active) {
        done(vmError(LocalError::CONFLICT, fmt::format("VM {} is not running", name)));
        return;
      }
      if (auto st = setRunning(false); !st) return done(vmError(LocalError::INTERNAL, st.error().message));
      beginStop(name, timeout, false, std::move(done));
      return;
    }
    case v1::VmActionRequest::REBOOT: {
      if (!active) {
        done(vmError(LocalError::CONFLICT, fmt::format("VM {} is not running", name)));
        return;
      }
      if (auto st = backend_.reboot(name); !st) return done(vmError(LocalError::INTERNAL, st.error().message));
      done(infoNow(name));
      return;
    }
    case v1::VmActionRequest::DELETE: {
      if (inDesired) {
        auto saved = desired_[name];
        desired_.erase(name);
        if (auto st = persist(); !st) {
          desired_[name] = saved;
          return done(vmError(LocalError::INTERNAL, st.error().message));
        }
      }
      beginStop(name, timeout, true, std::move(done));
      return;
    }
    default:
      done(vmError(LocalError::BAD_REQUEST, fmt::format("unknown action {} for VM {}", static_cast<int>(req.action()), name)));
  }
}

Result<v1::VmList> VmManager::list(bool withStats) {
  v1::VmList out;
  std::map<std::string, DomainRecord> recs;
  if (backend_.connected()) {
    auto all = backend_.listManaged();
    if (!all) return vmError(LocalError::INTERNAL, all.error().message);
    for (auto& r : *all) recs[r.name] = std::move(r);
  }
  std::set<std::string> names;
  for (const auto& [n, r] : recs) names.insert(n);
  for (const auto& [n, vm] : desired_) names.insert(n);
  for (const auto& n : names) {
    auto it = recs.find(n);
    std::optional<DomainRecord> rec;
    if (it != recs.end()) rec = it->second;
    auto i = info(n, rec);
    if (withStats && rec) {
      if (auto s = backend_.stats(n); s) *i.mutable_stats() = *s;
    }
    *out.add_vms() = std::move(i);
  }
  return out;
}

Result<v1::ConsoleTail> VmManager::console(const v1::VmConsoleRequest& req) {
  const std::string& name = req.name();
  if (!validWorkloadName(name))
    return vmError(LocalError::BAD_REQUEST, fmt::format("VM name '{}' is invalid", xmlEscape(name.substr(0, 80))));
  bool known = desired_.count(name) > 0;
  if (!known && backend_.connected()) {
    auto rec = backend_.lookup(name);
    known = rec && *rec && (*rec)->managed;
  }
  if (!known) return vmError(LocalError::NOT_FOUND, fmt::format("no VM named {} is managed here", name));
  // Bounded so the reply always fits one local frame.
  std::uint64_t max = req.max_bytes() ? std::min<std::uint64_t>(req.max_bytes(), 512u << 10) : 64u << 10;
  bool truncated = false;
  auto cur = tailOf(consoleLog(name), max, truncated);
  if (!cur) return vmError(LocalError::INTERNAL, cur.error().message);
  std::string data = *cur;
  if (!truncated && data.size() < max) {
    bool prevTrunc = false;
    auto prev = tailOf(fs::path(consoleLog(name).string() + ".1"), max - data.size(), prevTrunc);
    if (prev && !prev->empty()) {
      data = *prev + data;
      truncated = true;  // the part before .1 was dropped when it was trimmed
    }
  }
  v1::ConsoleTail t;
  t.set_name(name);
  t.set_data(std::move(data));
  t.set_truncated(truncated);
  return t;
}

}  // namespace outrider::vmm
