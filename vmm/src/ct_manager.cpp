#include "outrider/vmm/ct_manager.hpp"

#include <signal.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/names.hpp"
#include "outrider/vmm/ct_log.hpp"

namespace outrider::vmm {

namespace fs = std::filesystem;
using v1::LocalError;
using v1::LocalReply;

struct ContainerManager::Ct {
  std::string name;
  bool desired = false;
  v1::ContainerSpec spec;            // as the manifest (or the last apply) has it
  std::optional<bool> override;      // operator's START (true) / STOP (false) since that apply
  bool hasBundle = false;
  std::string builtKey;              // specKey of the spec the bundle on disk was made from
  v1::ContainerSpec built;
  bool wantLaunch = false;           // launch when desired running (new, recreated, started, lost)
  bool launching = false;
  std::chrono::steady_clock::time_point launchedAt{};
  std::string state = "stopped";
  int pid = 0;
  bool exited = false;
  int exitCode = 0, signal = 0;
  bool oom = false;
  unsigned restarts = 0, consecutive = 0;
  std::int64_t nextRestartMs = 0;
  std::int64_t stateSinceMs = 0;
  std::string lastError;
  std::chrono::steady_clock::time_point runningSince{};
  bool stopping = false, removing = false;
  bool building = false;             // the bundle is being made on the worker thread
  std::string builtFailedKey;        // the spec whose build failed: retried by the periodic pass only
  std::int64_t seenRun = 0;          // startedMs of the supervisor run whose end was handled
  std::unique_ptr<boost::asio::steady_timer> killTimer, restartTimer;
};

namespace {

constexpr std::string_view kMagic = "OUTRIDER-CT1";

std::string sealed(const std::string& payload) {
  auto sum = crypto::sha256(payload);
  return std::string(kMagic) + " " + crypto::hex(std::span<const std::uint8_t>(sum)) + "\n" + payload;
}

Result<std::string> unseal(const fs::path& p) {
  auto text = readFile(p);
  if (!text) return text.error();
  auto nl = text->find('\n');
  if (nl == std::string::npos || text->compare(0, kMagic.size(), kMagic) != 0)
    return Error{p.string() + ": not a container state file"};
  std::string want = text->substr(kMagic.size() + 1, nl - kMagic.size() - 1);
  std::string payload = text->substr(nl + 1);
  auto sum = crypto::sha256(payload);
  if (crypto::hex(std::span<const std::uint8_t>(sum)) != want) return Error{p.string() + ": checksum mismatch"};
  return payload;
}

LocalReply err(LocalError::Code code, std::string msg) { return ipc::errorReply(code, std::move(msg)); }

bool processAlive(int pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

}  // namespace

ContainerManager::ContainerManager(boost::asio::io_context& io, CtSettings settings,
                                   std::shared_ptr<ContainerRuntime> runtime, Publish publish, unsigned hostCpus)
    : io_(io),
      settings_(std::move(settings)),
      runtime_(std::move(runtime)),
      publish_(std::move(publish)),
      hostCpus_(hostCpus),
      images_(settings_.imagesDir),
      cgroupMode_(detectCgroupMode(settings_.cgroupRoot)),
      tick_(io) {}

ContainerManager::~ContainerManager() {
  shutdown();
  pool_.join();
}

void ContainerManager::shutdown() {
  stopped_ = true;
  tick_.cancel();
  if (inotify_) {
    boost::system::error_code ec;
    inotify_->close(ec);
    inotify_.reset();
  }
  for (auto& [n, c] : cts_) {
    if (c->killTimer) c->killTimer->cancel();
    if (c->restartTimer) c->restartTimer->cancel();
  }
}

std::int64_t ContainerManager::nowMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

ContainerManager::Ct& ContainerManager::record(const std::string& name) {
  auto& p = cts_[name];
  if (!p) {
    p = std::make_unique<Ct>();
    p->name = name;
    p->stateSinceMs = nowMs();
  }
  return *p;
}

bool ContainerManager::desiredRunning(const Ct& c) const {
  if (!c.desired) return false;
  if (c.override) return *c.override;
  return !c.spec.stopped();
}

bool ContainerManager::active(const Ct& c) const { return c.launching || c.state == "running"; }

void ContainerManager::setState(Ct& c, const std::string& state) {
  if (c.state != state) c.stateSinceMs = nowMs();
  c.state = state;
}

// ---------------------------------------------------------------- persistence

void ContainerManager::loadDesired() {
  std::error_code ec;
  fs::path file = settings_.stateDir / "desired";
  if (fs::exists(file, ec)) {
    auto payload = unseal(file);
    v1::CtApplyRequest req;
    if (!payload || !req.ParseFromString(*payload)) {
      LOG_ERR("containers: desired state {} is unreadable ({}); keeping running containers, waiting for the next "
              "apply",
              file.string(), payload ? "bad encoding" : payload.error().message);
    } else {
      manifestVersion_ = req.manifest_version();
      for (auto& s : req.containers()) {
        auto& c = record(s.name());
        c.desired = true;
        c.spec = s;
      }
    }
  }
  fs::path ov = settings_.stateDir / "overrides";
  if (fs::exists(ov, ec)) {
    auto payload = unseal(ov);
    if (!payload) {
      LOG_WARN("containers: {}, ignoring", payload.error().message);
      return;
    }
    std::istringstream in(*payload);
    std::string name, what;
    while (in >> name >> what)
      if (auto it = cts_.find(name); it != cts_.end() && it->second->desired) it->second->override = what == "start";
  }
}

Status ContainerManager::saveDesired() {
  if (auto st = makeDirs(settings_.stateDir, 0700); !st) return st;
  v1::CtApplyRequest req;
  req.set_manifest_version(manifestVersion_);
  std::string overrides;
  for (auto& [n, c] : cts_) {
    if (!c->desired) continue;
    *req.add_containers() = c->spec;
    if (c->override) overrides += n + (*c->override ? " start\n" : " stop\n");
  }
  std::string desired = sealed(req.SerializeAsString());
  overrides = sealed(overrides);
  // Each file is written only when it changed (an operator's START/STOP touches only the overrides).
  if (overrides != savedOverrides_) {
    if (auto st = writeFileAtomic(settings_.stateDir / "overrides", overrides, 0600); !st) return st;
    savedOverrides_ = overrides;
  }
  if (desired != savedDesired_) {
    if (auto st = writeFileAtomic(settings_.stateDir / "desired", desired, 0600); !st) return st;
    savedDesired_ = desired;
  }
  return {};
}

// ---------------------------------------------------------------- start-up and adoption

void ContainerManager::start() {
  loadDesired();
  adopt();
  int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd >= 0) {
    inotify_ = std::make_unique<boost::asio::posix::stream_descriptor>(io_, fd);
    for (auto& [n, c] : cts_)
      if (c->hasBundle) watch(n);
    readInotify();
  } else {
    LOG_WARN("containers: inotify: {}; exits are noticed by the timer only, ignoring", std::strerror(errno));
  }
  pollStatus();
  reconcile(true);
  armTick();
}

void ContainerManager::adopt() {
  std::error_code ec;
  if (!fs::is_directory(settings_.stateDir, ec)) return;
  std::string boot = currentBootId();
  for (auto& e : fs::directory_iterator(settings_.stateDir, ec)) {
    std::string name = e.path().filename().string();
    if (!e.is_directory(ec) || !validWorkloadName(name)) continue;
    auto& c = record(name);
    c.hasBundle = true;
    if (auto bytes = readFile(e.path() / "spec.pb", 1 << 20); bytes && c.built.ParseFromString(*bytes))
      c.builtKey = specKey(c.built);
    bool runStateKnown = false;
    if (auto seen = readFile(e.path() / "seen", 128); seen) {
      long long run = 0, next = 0;
      unsigned restarts = 0, consecutive = 0;
      const int n = std::sscanf(seen->c_str(), "%lld %u %u %lld", &run, &restarts, &consecutive, &next);
      if (n >= 1) c.seenRun = run;
      if (n == 4) {  // an older vmm wrote the run only (n == 1): then the restart policy decides below
        runStateKnown = true;
        c.restarts = restarts;
        c.consecutive = consecutive;
        c.nextRestartMs = next;
      }
    }
    auto s = runtime_->status(e.path());
    if (!s) {
      c.wantLaunch = true;  // built but never launched (vmm stopped in between)
      continue;
    }
    bool sameBoot = s->bootId == boot;
    if ((s->state == "running" || s->state == "starting") && sameBoot && processAlive(s->shimPid)) {
      if (s->state == "running") {
        setState(c, "running");
        c.pid = s->pid;
        c.runningSince = std::chrono::steady_clock::now();
        LOG_INFO("containers: adopted {} (pid {})", name, s->pid);
      } else {
        c.launching = true;
        c.launchedAt = std::chrono::steady_clock::now();
      }
    } else if ((s->state == "exited" || s->state == "failed") && sameBoot) {
      c.exited = s->state == "exited";
      c.exitCode = s->exitCode;
      c.signal = s->signal;
      if (s->state == "failed") c.lastError = s->error;
      // handleStatus reports an exit vmm has not seen yet (it happened while vmm was down). An exit it had
      // handled may have been waiting out its restart backoff: that goes on, for the time that is left.
      if (s->startedMs != 0 && s->startedMs == c.seenRun) {
        const bool clean = s->state == "exited" && s->exitCode == 0 && s->signal == 0;
        const bool pending = runStateKnown ? c.nextRestartMs > 0
                                           : desiredRunning(c) && c.builtKey == specKey(c.spec) &&
                                                 shouldRestart(c.built.restart(), clean);
        if (pending)
          armRestart(c, std::chrono::milliseconds(std::max<std::int64_t>(0, c.nextRestartMs - nowMs())));
      }
    } else {
      // The box restarted (or the supervisor vanished): nothing runs any more; start it again if wanted.
      c.wantLaunch = true;
      c.seenRun = s->startedMs;
    }
  }
}

// ---------------------------------------------------------------- inotify and the timer

void ContainerManager::watch(const std::string& name) {
  if (!inotify_) return;
  int wd = ::inotify_add_watch(inotify_->native_handle(), bundle(name).c_str(), IN_MOVED_TO | IN_CLOSE_WRITE);
  if (wd >= 0) watches_[wd] = name;
}

void ContainerManager::readInotify() {
  if (!inotify_) return;
  std::weak_ptr<ContainerManager> weak = weak_from_this();
  inotify_->async_read_some(boost::asio::buffer(inotifyBuf_), [weak](boost::system::error_code ec, std::size_t n) {
    auto self = weak.lock();
    if (!self || ec || self->stopped_) return;
    std::set<std::string> changed;
    for (std::size_t off = 0; off + sizeof(inotify_event) <= n;) {
      auto* ev = reinterpret_cast<const inotify_event*>(self->inotifyBuf_ + off);
      if (ev->len && std::string_view(ev->name) == "status")
        if (auto it = self->watches_.find(ev->wd); it != self->watches_.end()) changed.insert(it->second);
      if (ev->mask & IN_IGNORED) self->watches_.erase(ev->wd);
      off += sizeof(inotify_event) + ev->len;
    }
    for (auto& name : changed)
      if (auto it = self->cts_.find(name); it != self->cts_.end()) self->handleStatus(*it->second);
    self->readInotify();
  });
}

void ContainerManager::armTick() {
  if (stopped_) return;
  tick_.expires_after(std::chrono::seconds(1));
  std::weak_ptr<ContainerManager> weak = weak_from_this();
  tick_.async_wait([weak](boost::system::error_code ec) {
    auto self = weak.lock();
    if (!self || ec || self->stopped_) return;
    if (auto* crun = dynamic_cast<CrunRuntime*>(self->runtime_.get())) crun->reapChildren();
    self->pollStatus();
    if (std::chrono::steady_clock::now() - self->lastReconcile_ >= self->settings_.reconcileInterval)
      self->reconcile(true);
    self->armTick();
  });
}

// ---------------------------------------------------------------- status of supervisors

void ContainerManager::pollStatus() {
  std::vector<std::string> names;
  for (auto& [n, c] : cts_) names.push_back(n);
  for (auto& n : names)
    if (auto it = cts_.find(n); it != cts_.end() && it->second->hasBundle) handleStatus(*it->second);
}

void ContainerManager::handleStatus(Ct& c) {
  if (!c.hasBundle) return;
  auto s = runtime_->status(bundle(c.name));
  if (!s) {
    if (c.launching && std::chrono::steady_clock::now() - c.launchedAt > std::chrono::seconds(30)) {
      c.launching = false;
      c.lastError = "the supervisor never reported (see " + (bundle(c.name) / "shim.log").string() + ")";
      setState(c, "stopped");
      publish_(c.name, "failed: " + c.lastError);
    }
    return;
  }
  if (s->startedMs != 0 && s->startedMs == c.seenRun) return;  // this run's end was handled already
  if (s->state == "running" && c.state != "running") {
    c.launching = false;
    c.pid = s->pid;
    c.exited = false;
    c.runningSince = std::chrono::steady_clock::now();
    c.lastError.clear();
    setState(c, "running");
    publish_(c.name, "running");
    return;
  }
  if (s->state == "exited" || s->state == "failed") {
    handleExit(c, *s);
    return;
  }
  // Still starting/running: make sure the supervisor lives, else the container's end can't be learned.
  if (!processAlive(s->shimPid) || s->bootId != currentBootId()) {
    auto again = runtime_->status(bundle(c.name));  // it may have written its last record just now
    if (again && (again->state == "exited" || again->state == "failed")) return handleExit(c, *again);
    LOG_WARN("containers: supervisor of {} is gone; removing the container to start it again", c.name);
    (void)runtime_->remove(c.name);
    c.seenRun = s->startedMs;
    c.launching = false;
    c.pid = 0;
    c.lastError = "supervisor lost";
    c.wantLaunch = true;
    setState(c, "stopped");
  }
}

void ContainerManager::handleExit(Ct& c, const ShimStatus& s) {
  c.seenRun = s.startedMs;
  c.nextRestartMs = 0;  // this run's end supersedes any restart that was pending
  saveRunState(c);
  bool wasStopping = c.stopping, wasLaunching = c.launching;
  c.launching = false;
  c.stopping = false;
  c.pid = 0;
  if (c.killTimer) c.killTimer->cancel();
  // A run too short for its "running" record to be read is still reported as having run.
  if (s.state == "exited" && s.pid > 0 && wasLaunching) publish_(c.name, "running");
  std::string detail;
  if (s.state == "failed") {
    c.exited = false;
    c.lastError = s.error;
    detail = "failed: " + s.error;
  } else {
    c.exited = true;
    c.exitCode = s.exitCode;
    c.signal = s.signal;
    auto stats = readCgroupStats(settings_.cgroupRoot, cgroupMode_, cgroupRel(c.name));
    c.oom = stats && stats->oom_kills() > 0;
    detail = s.signal ? fmt::format("killed signal={}", s.signal) : fmt::format("exited code={}", s.exitCode);
    if (c.oom) detail += " (oom)";
  }
  // The runtime's record of the ended run goes now (after the cgroup was read), not on the next start's path.
  if (auto st = runtime_->remove(c.name); !st) LOG_WARN("containers: {}, ignoring", st.error().message);
  setState(c, "stopped");
  publish_(c.name, detail);
  if (c.removing) return removeNow(c.name);
  bool clean = s.state == "exited" && s.exitCode == 0 && s.signal == 0;
  bool runLong = c.runningSince != std::chrono::steady_clock::time_point{} &&
                 std::chrono::steady_clock::now() - c.runningSince >= kBackoffReset;
  if (runLong) c.consecutive = 0;
  if (!wasStopping && desiredRunning(c) && c.builtKey == specKey(c.spec) && shouldRestart(c.built.restart(), clean))
    scheduleRestart(c);
  reconcile();
}

void ContainerManager::scheduleRestart(Ct& c) {
  armRestart(c, restartDelay(c.consecutive++));
}

/// State "restarting", and a launch after `delay` if the container is still wanted running then.
void ContainerManager::armRestart(Ct& c, std::chrono::milliseconds delay) {
  c.nextRestartMs = nowMs() + delay.count();
  setState(c, "restarting");
  publish_(c.name, fmt::format("restarting in {}s", (delay.count() + 999) / 1000));
  c.restartTimer = std::make_unique<boost::asio::steady_timer>(io_, delay);
  std::weak_ptr<ContainerManager> weak = weak_from_this();
  std::string name = c.name;
  c.restartTimer->async_wait([weak, name](boost::system::error_code ec) {
    auto self = weak.lock();
    if (!self || ec || self->stopped_) return;
    auto it = self->cts_.find(name);
    if (it == self->cts_.end() || it->second->state != "restarting") return;
    auto& ct = *it->second;
    ct.nextRestartMs = 0;
    if (!self->desiredRunning(ct)) {
      self->setState(ct, "stopped");
      self->saveRunState(ct);
      return;
    }
    ct.restarts++;
    self->saveRunState(ct);
    self->launch(ct);
  });
  saveRunState(c);
}

/// The bundle's "seen" file: the supervisor run whose end was handled, the restart count, the quick
/// exits in a row (the backoff), and when a pending restart is due (wall clock ms, 0 for none), so that
/// a restarted vmm goes on where this one was.
void ContainerManager::saveRunState(const Ct& c) {
  (void)writeFileAtomic(bundle(c.name) / "seen",
                        fmt::format("{} {} {} {}", c.seenRun, c.restarts, c.consecutive, c.nextRestartMs), 0600);
}

// ---------------------------------------------------------------- actions on the runtime

void ContainerManager::startBuild(Ct& c) {
  fs::path dir = bundle(c.name);
  if (auto st = makeDirs(dir, 0700); !st) {
    c.lastError = "prepare bundle: " + st.error().message;
    return;
  }
  if (!c.hasBundle) {
    c.hasBundle = true;
    watch(c.name);
  }
  std::error_code ec;
  fs::remove(dir / "spec.pb", ec);  // until the new bundle is complete
  c.builtKey.clear();
  c.building = true;
  BundleOptions o;
  o.cgroupsPath = "/" + cgroupRel(c.name);
  o.memorySwapLimit = cgroupMode_ != CgroupMode::v2 &&
                      fs::exists(settings_.cgroupRoot / "memory" / "memory.memsw.limit_in_bytes", ec);
  o.rootfsPath = c.spec.read_only_root() ? images_.rootfs(c.spec.image()).string() : "rootfs";
  // Copying a root filesystem can take long: the files are made on the worker thread, then the result
  // comes back to the loop.
  std::weak_ptr<ContainerManager> weak = weak_from_this();
  boost::asio::post(pool_, [weak, name = c.name, spec = c.spec, dir, o, image = images_.rootfs(c.spec.image()),
                            rt = runtime_, &io = io_] {
    auto st = [&]() -> Status {
      (void)rt->remove(name);
      std::error_code ec2;
      fs::remove_all(dir / "rootfs", ec2);
      if (!spec.read_only_root()) {
        // A writable copy per container (reflinked where the filesystem can).
        fs::path tmp = dir / "rootfs.tmp";
        fs::remove_all(tmp, ec2);
        auto r = runCommand({"cp", "-a", "--reflink=auto", image.string(), tmp.string()}, std::chrono::minutes(10));
        if (!r) return r.error();
        if (r->exitCode != 0) return Error{"copy image rootfs: " + r->err};
        fs::rename(tmp, dir / "rootfs", ec2);
        if (ec2) return Error{"install rootfs copy: " + ec2.message()};
      }
      if (auto w = writeFileAtomic(dir / "config.json", renderConfigJson(spec, o), 0600); !w) return w;
      return writeFileAtomic(dir / "spec.pb", spec.SerializeAsString(), 0600);
    }();
    boost::asio::post(io, [weak, name, spec, st] {
      if (auto self = weak.lock()) self->finishBuild(name, spec, st);
    });
  });
}

void ContainerManager::finishBuild(const std::string& name, const v1::ContainerSpec& spec, const Status& st) {
  auto it = cts_.find(name);
  if (it == cts_.end()) return;
  auto& c = *it->second;
  c.building = false;
  if (!st) {
    c.lastError = "prepare bundle: " + st.error().message;
    c.builtFailedKey = specKey(spec);
    LOG_ERR("containers: {}: {}", name, c.lastError);
    publish_(name, "failed: " + c.lastError);
  } else {
    c.built = spec;
    c.builtKey = specKey(spec);
    c.restarts = 0;
    c.consecutive = 0;
    c.nextRestartMs = 0;
    c.lastError.clear();
    c.exited = false;
    setState(c, "stopped");
    saveRunState(c);
    c.wantLaunch = true;  // launched below if it is (still) desired running
  }
  if (stopped_) return;
  reconcileOne(c);
}

bool ContainerManager::busy() const {
  if (!importing_.empty()) return true;
  for (auto& [n, c] : cts_)
    if (c->building) return true;
  return false;
}

void ContainerManager::launch(Ct& c) {
  if (c.restartTimer) c.restartTimer->cancel();
  c.wantLaunch = false;
  (void)runtime_->remove(c.name);  // the previous run's runtime state, if any
  std::error_code ec;
  fs::remove(bundle(c.name) / "status", ec);
  std::uint64_t logMax = c.built.log_max_bytes() ? c.built.log_max_bytes() : settings_.logMaxBytes;
  if (auto st = runtime_->launch(c.name, bundle(c.name), logMax); !st) {
    c.lastError = st.error().message;
    setState(c, "stopped");
    publish_(c.name, "failed: " + c.lastError);
    return;
  }
  c.launching = true;
  c.launchedAt = std::chrono::steady_clock::now();
  c.exited = false;
  c.oom = false;
  c.nextRestartMs = 0;
  setState(c, "created");
  handleStatus(c);  // a fast supervisor may already have written
}

void ContainerManager::stop(Ct& c, std::uint32_t timeoutS) {
  if (c.state == "restarting") {
    if (c.restartTimer) c.restartTimer->cancel();
    c.nextRestartMs = 0;
    setState(c, "stopped");
    if (c.removing) return removeNow(c.name);
    saveRunState(c);
    return;
  }
  if (c.stopping) return;
  c.stopping = true;
  if (auto st = runtime_->kill(c.name, "TERM"); !st) LOG_WARN("containers: {}, ignoring", st.error().message);
  std::uint32_t t = timeoutS ? timeoutS : (c.built.stop_timeout_s() ? c.built.stop_timeout_s() : settings_.stopTimeoutS);
  c.killTimer = std::make_unique<boost::asio::steady_timer>(io_, std::chrono::seconds(t));
  std::weak_ptr<ContainerManager> weak = weak_from_this();
  std::string name = c.name;
  c.killTimer->async_wait([weak, name](boost::system::error_code ec) {
    auto self = weak.lock();
    if (!self || ec) return;
    auto it = self->cts_.find(name);
    if (it == self->cts_.end() || !it->second->stopping) return;
    LOG_NOTICE("containers: {} did not stop after SIGTERM, sending SIGKILL", name);
    if (auto st = self->runtime_->kill(name, "KILL"); !st) LOG_WARN("containers: {}, ignoring", st.error().message);
  });
}

void ContainerManager::removeNow(std::string name) {
  auto it = cts_.find(name);
  if (it == cts_.end()) return;
  auto& c = *it->second;
  if (c.killTimer) c.killTimer->cancel();
  if (c.restartTimer) c.restartTimer->cancel();
  if (auto st = runtime_->remove(name); !st) {
    c.lastError = st.error().message;
    LOG_WARN("containers: remove {}: {}, will retry", name, st.error().message);
    return;
  }
  std::error_code ec;
  for (auto& [wd, n] : watches_)
    if (n == name && inotify_) ::inotify_rm_watch(inotify_->native_handle(), wd);
  fs::remove_all(bundle(name), ec);
  removeEmptyCgroupDirs(settings_.cgroupRoot, cgroupMode_, cgroupRel(name));
  bool wasDesired = c.desired;
  cts_.erase(it);
  bool anyLeft = false;
  for (auto& [n, other] : cts_) anyLeft = anyLeft || other->hasBundle;
  if (!anyLeft) removeEmptyCgroupDirs(settings_.cgroupRoot, cgroupMode_, settings_.cgroupParent);
  publish_(name, "removed");
  if (wasDesired) (void)saveDesired();
}

// ---------------------------------------------------------------- reconcile

void ContainerManager::reconcile(bool sweep) {
  if (stopped_) return;
  if (sweep) lastReconcile_ = std::chrono::steady_clock::now();
  // Runtime containers under our root without a bundle of ours are leftovers: remove them. Listing runs
  // the runtime, so only the start-up and periodic passes do it, not the ones on every exit or request.
  if (!sweep) {
  } else if (auto listed = runtime_->list(); listed) {
    for (auto& rc : *listed)
      if (!cts_.count(rc.id) || !cts_[rc.id]->hasBundle) {
        LOG_NOTICE("containers: removing {} (in the runtime, not managed)", rc.id);
        (void)runtime_->remove(rc.id);
        if (auto it = cts_.find(rc.id); it != cts_.end() && !it->second->desired) cts_.erase(it);
      }
  }
  std::vector<std::string> names;
  for (auto& [n, c] : cts_) {
    names.push_back(n);
    if (sweep) c->builtFailedKey.clear();
  }
  for (auto& n : names)
    if (auto it = cts_.find(n); it != cts_.end()) reconcileOne(*it->second);
}

void ContainerManager::reconcileOne(Ct& c) {
  if (c.building) return;  // finishBuild reconciles it again
  if (!c.desired) {
    if (!c.hasBundle) {
      std::string name = c.name;
      cts_.erase(name);
      return;
    }
    c.removing = true;
    if (active(c) && c.state == "running")
      stop(c, 0);
    else if (!c.launching)
      removeNow(c.name);
    return;
  }
  if (c.launching || c.stopping || c.building) return;  // wait for the supervisor's record or the build
  bool running = c.state == "running";
  bool stale = !c.hasBundle || c.builtKey != specKey(c.spec);
  if (stale) {
    if (running) {
      stop(c, 0);  // rebuilt once it has stopped
      return;
    }
    if (!images_.has(c.spec.image())) {
      if (c.spec.image_source().empty()) {
        c.lastError = "image '" + c.spec.image() + "' is not imported and the spec has no image_source";
        return;
      }
      if (importing_.count(c.spec.image())) return;
      if (auto e = importErrors_.find(c.spec.image()); e != importErrors_.end()) {
        c.lastError = e->second;
        return;
      }
      std::weak_ptr<ContainerManager> weak = weak_from_this();
      std::string image = c.spec.image();
      startImport(image, c.spec.image_source(), "", [weak, image](Result<ImageInfoData> r) {
        auto self = weak.lock();
        if (!self) return;
        if (!r) {
          LOG_ERR("containers: import image {}: {}", image, r.error().message);
          self->importErrors_[image] = "import image '" + image + "': " + r.error().message;
        }
        self->reconcile();
      });
      return;
    }
    if (c.state == "restarting" && c.restartTimer) c.restartTimer->cancel();
    if (c.builtFailedKey == specKey(c.spec)) return;  // failed: the periodic pass tries again
    startBuild(c);
    return;
  }
  if (desiredRunning(c)) {
    if (!running && c.state != "restarting" && c.wantLaunch) launch(c);
  } else if (running) {
    stop(c, 0);
  } else if (c.state == "restarting") {
    stop(c, 0);
  }
}

// ---------------------------------------------------------------- requests

LocalReply ContainerManager::apply(const v1::CtApplyRequest& req) {
  std::set<std::string> names;
  for (auto& s : req.containers())
    if (!names.insert(s.name()).second)
      return err(LocalError::BAD_REQUEST,
                 "container '" + s.name() + "' appears twice in the desired set; nothing was applied");
  LocalReply reply;
  auto* out = reply.mutable_apply();
  out->set_manifest_version(req.manifest_version());
  std::set<std::string> keep;  // names whose previous desired state stays (their new spec was refused)
  std::map<std::string, std::string> actions;
  for (auto& s : req.containers()) {
    auto* r = out->add_results();
    r->set_kind("container");
    r->set_name(s.name());
    Status st = validateSpec(s, hostCpus_);
    if (st && !images_.has(s.image()) && s.image_source().empty())
      st = Error{"container '" + s.name() + "': image '" + s.image() + "' is not imported and no image_source is given"};
    if (!st) {
      r->set_ok(false);
      r->set_error(st.error().message);
      keep.insert(s.name());
      continue;
    }
    r->set_ok(true);
    auto it = cts_.find(s.name());
    bool known = it != cts_.end() && it->second->desired;
    auto& c = record(s.name());
    std::string action;
    if (!known) {
      action = s.stopped() ? "created" : "started";
      c.wantLaunch = !s.stopped();
    } else if (specKey(c.spec) != specKey(s)) {
      action = "recreated";
    } else if (c.spec.stopped() != s.stopped()) {
      action = s.stopped() ? "stopped" : "started";
      if (!s.stopped()) c.wantLaunch = !active(c);
    } else {
      action = "unchanged";
    }
    if (action != "unchanged") c.override.reset();
    if (!images_.has(s.image()) && action != "unchanged") {
      importErrors_.erase(s.image());  // a new apply tries a failed import again
      action += " (importing image)";
    }
    c.desired = true;
    c.spec = s;
    c.removing = false;
    r->set_action(action);
  }
  for (auto& [n, c] : cts_) {
    if (!c->desired || names.count(n)) continue;
    c->desired = false;
    auto* r = out->add_results();
    r->set_kind("container");
    r->set_name(n);
    r->set_ok(true);
    r->set_action("removed");
  }
  manifestVersion_ = req.manifest_version();
  if (auto st = saveDesired(); !st) LOG_ERR("containers: persist desired state: {}", st.error().message);
  reconcile();
  // Report what the first pass could not do (e.g. a failed bundle).
  for (auto& r : *out->mutable_results()) {
    auto it = cts_.find(r.name());
    if (r.ok() && it != cts_.end() && !it->second->lastError.empty() && r.action() != "removed") {
      r.set_ok(false);
      r.set_error(it->second->lastError);
    }
  }
  return reply;
}

v1::ContainerInfo ContainerManager::info(const Ct& c, bool withStats) const {
  v1::ContainerInfo i;
  const auto& s = c.desired ? c.spec : c.built;
  i.set_name(c.name);
  i.set_state(c.launching ? "created" : c.state);
  i.set_image(s.image());
  i.set_pid(c.pid);
  i.set_exited(c.exited);
  i.set_exit_code(c.exitCode);
  i.set_signal(c.signal);
  i.set_restarts(c.restarts);
  i.set_restart(restartName(s.restart()));
  i.set_next_restart_ms(c.nextRestartMs);
  i.set_managed(c.desired);
  i.set_desired_running(desiredRunning(c));
  i.set_state_since_ms(c.stateSinceMs);
  i.set_last_error(c.lastError);
  i.set_oom_killed(c.oom);
  if (withStats && c.state == "running")
    if (auto st = readCgroupStats(settings_.cgroupRoot, cgroupMode_, cgroupRel(c.name)); st)
      *i.mutable_stats() = *st;
  return i;
}

LocalReply ContainerManager::list(bool withStats) {
  LocalReply reply;
  auto* l = reply.mutable_ct_list();
  for (auto& [n, c] : cts_)
    if (c->desired || c->hasBundle) *l->add_containers() = info(*c, withStats);
  return reply;
}

LocalReply ContainerManager::action(const v1::CtActionRequest& req) {
  if (!validWorkloadName(req.name())) return err(LocalError::BAD_REQUEST, "container name '" + req.name() + "' is invalid");
  if (req.timeout_s() > 3600) return err(LocalError::BAD_REQUEST, "timeout_s must be at most 3600");
  auto it = cts_.find(req.name());
  if (it == cts_.end() || (!it->second->desired && !it->second->hasBundle))
    return err(LocalError::NOT_FOUND, "no container named '" + req.name() + "'");
  auto& c = *it->second;
  LocalReply reply;
  switch (req.action()) {
    case v1::CtActionRequest::START: {
      if (!c.desired) return err(LocalError::CONFLICT, "container '" + c.name + "' is being removed");
      if (active(c)) return err(LocalError::CONFLICT, "container '" + c.name + "' is already running");
      c.override = true;
      if (auto st = saveDesired(); !st) return err(LocalError::INTERNAL, "persist desired state: " + st.error().message);
      c.wantLaunch = true;
      if (c.state == "restarting" && c.restartTimer) {
        c.restartTimer->cancel();
        setState(c, "stopped");
      }
      c.consecutive = 0;
      c.nextRestartMs = 0;
      saveRunState(c);
      reconcileOne(c);
      if (!c.lastError.empty() && !active(c)) return err(LocalError::INTERNAL, c.lastError);
      break;
    }
    case v1::CtActionRequest::STOP: {
      if (!active(c) && c.state != "restarting")
        return err(LocalError::CONFLICT, "container '" + c.name + "' is not running");
      if (c.launching) return err(LocalError::CONFLICT, "container '" + c.name + "' is starting; stop it once it runs");
      if (c.desired) {
        c.override = false;
        if (auto st = saveDesired(); !st) return err(LocalError::INTERNAL, "persist desired state: " + st.error().message);
      }
      stop(c, req.timeout_s());
      break;
    }
    case v1::CtActionRequest::DELETE: {
      if (c.building) return err(LocalError::CONFLICT, "container '" + c.name + "' is being prepared; delete it after");
      // Out of the desired set until an apply names it again.
      std::string name = c.name;
      bool wasDesired = c.desired;
      c.desired = false;
      if (wasDesired)
        if (auto st = saveDesired(); !st) return err(LocalError::INTERNAL, "persist desired state: " + st.error().message);
      *reply.mutable_ct() = info(c, false);
      reply.mutable_ct()->set_state("removed");
      removeNow(name);  // crun delete -f kills it
      if (auto again = cts_.find(name); again != cts_.end())
        return err(LocalError::INTERNAL, "delete " + name + ": " + again->second->lastError);
      return reply;
    }
    default:
      return err(LocalError::BAD_REQUEST, "unknown container action " + std::to_string(static_cast<int>(req.action())));
  }
  if (auto again = cts_.find(req.name()); again != cts_.end()) *reply.mutable_ct() = info(*again->second, false);
  return reply;
}

LocalReply ContainerManager::logs(const v1::CtLogsRequest& req) {
  if (!validWorkloadName(req.name())) return err(LocalError::BAD_REQUEST, "container name '" + req.name() + "' is invalid");
  auto it = cts_.find(req.name());
  if (it == cts_.end() || !it->second->hasBundle) return err(LocalError::NOT_FOUND, "no container named '" + req.name() + "'");
  std::uint64_t max = req.max_bytes() ? std::min<std::uint32_t>(req.max_bytes(), 256 * 1024) : 64 * 1024;
  auto out = readLogTail(bundle(req.name()) / "stdout.log", max);
  auto errs = readLogTail(bundle(req.name()) / "stderr.log", max);
  LocalReply reply;
  auto* l = reply.mutable_logs();
  l->set_name(req.name());
  l->set_stdout_data(out.data);
  l->set_stderr_data(errs.data);
  l->set_truncated(out.truncated || errs.truncated);
  return reply;
}

void ContainerManager::startImport(const std::string& image, const fs::path& source, const std::string& user,
                                   std::function<void(Result<ImageInfoData>)> done) {
  importing_.insert(image);
  std::weak_ptr<ContainerManager> weak = weak_from_this();
  ImageStore store = images_;
  boost::asio::post(pool_, [weak, store, image, source, user, done = std::move(done), &io = io_]() mutable {
    auto r = store.import(image, source, user);
    boost::asio::post(io, [weak, image, r = std::move(r), done = std::move(done)]() mutable {
      auto self = weak.lock();
      if (!self) return;
      self->importing_.erase(image);
      if (r) self->importErrors_.erase(image);
      done(std::move(r));
    });
  });
}

void ContainerManager::importImage(const v1::ImageImportRequest& req, std::function<void(LocalReply)> done) {
  if (!validWorkloadName(req.name())) return done(err(LocalError::BAD_REQUEST, "image name '" + req.name() + "' is invalid"));
  if (req.source().empty() || req.source().front() != '/')
    return done(err(LocalError::BAD_REQUEST, "image source '" + req.source() + "' must be an absolute path on the node"));
  std::error_code ec;
  if (!fs::exists(req.source(), ec))
    return done(err(LocalError::NOT_FOUND, "image source '" + req.source() + "' does not exist"));
  if (importing_.count(req.name()))
    return done(err(LocalError::CONFLICT, "image '" + req.name() + "' is being imported already"));
  // An image a running read-only container shares may only be re-imported with the same content.
  std::string user;
  for (auto& [n, c] : cts_)
    if (c->hasBundle && c->built.image() == req.name() && c->built.read_only_root() && active(*c)) user = n;
  startImport(req.name(), req.source(), user, [done = std::move(done)](Result<ImageInfoData> r) {
    if (!r) {
      if (r.error().code == EBUSY) return done(err(LocalError::CONFLICT, "import: " + r.error().message));
      bool bad = r.error().message.find("tar entry") != std::string::npos ||
                 r.error().message.find("not a tar") != std::string::npos ||
                 r.error().message.find("OCI layout") != std::string::npos ||
                 r.error().message.find("truncated") != std::string::npos;
      return done(err(bad ? LocalError::BAD_REQUEST : LocalError::INTERNAL, "import: " + r.error().message));
    }
    LocalReply reply;
    auto* i = reply.mutable_image();
    i->set_name(r->name);
    i->set_digest(r->digest);
    i->set_size_bytes(r->sizeBytes);
    done(std::move(reply));
  });
}

Health ContainerManager::health() const {
  int running = 0, managed = 0;
  for (auto& [n, c] : cts_) {
    running += c->state == "running";
    managed += c->desired;
  }
  bool crun = runtime_->available();
  std::string blockers = cgroupMode_ == CgroupMode::hybrid ? hybridBlockers(settings_.cgroupRoot) : "";
  std::string detail = fmt::format("{} container{} running of {} managed, crun {}, cgroup {}", running,
                                   running == 1 ? "" : "s", managed, crun ? "found" : "not found",
                                   cgroupModeName(cgroupMode_));
  if (!blockers.empty()) detail += " (cgroup2 still holds " + blockers + ": crun cannot run)";
  bool healthy = managed == 0 || (crun && blockers.empty());
  return {healthy, detail};
}

}  // namespace outrider::vmm
