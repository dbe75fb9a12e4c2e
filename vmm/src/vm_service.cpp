// The VM component of outrider-vmm: config, the worker thread that owns the VM manager and makes the
// blocking libvirt calls, libvirt's event loop on the daemon's io_context, timers, reconnects, and the
// local request handlers.
//
// Threads: the io_context thread runs the local API, libvirt's event loop (installLibvirtEventLoop) and
// the timers; one worker thread owns the VmManager and everything that talks to libvirtd. post() is the
// only way between them. io-side callbacks hold a weak_ptr; worker tasks use `this`, which the
// destructor keeps valid by joining the worker.
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <fmt/format.h>

#include <fstream>
#include <mutex>
#include <thread>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/log.hpp"
#include "outrider/vmm/component.hpp"
#include "outrider/vmm/libvirt_backend.hpp"
#include "outrider/vmm/libvirt_events.hpp"
#include "outrider/vmm/vm_accel.hpp"
#include "outrider/vmm/vm_manager.hpp"

namespace outrider::vmm {

namespace asio = boost::asio;
using v1::LocalError;
using v1::LocalReply;
using v1::LocalRequest;

namespace {

std::uint64_t memTotalMib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemTotal:") return kb / 1024;
  }
  return 0;
}

std::string hostArch() {
#if defined(__aarch64__)
  return "aarch64";
#else
  return "x86_64";
#endif
}

LocalReply errorOf(const Error& e) {
  auto code = e.code > 0 && LocalError::Code_IsValid(e.code) ? static_cast<LocalError::Code>(e.code) : LocalError::INTERNAL;
  return ipc::errorReply(code, e.message);
}

struct VmConfig {
  std::string uri;
  std::string accel;
  ManagerOptions opts;
  std::chrono::seconds reconcileEvery{10};
};

class VmComponent : public Component, public std::enable_shared_from_this<VmComponent> {
 public:
  VmComponent(LocalService& service, VmConfig cfg)
      : service_(service), io_(service.io()), cfg_(std::move(cfg)), backend_(cfg_.uri), reconcileTimer_(io_),
        tickTimer_(io_), reconnectTimer_(io_) {}

  ~VmComponent() override {
    asio::post(worker_, [this] {
      backend_.setEventHandler({});
      backend_.setCloseHandler({});
      backend_.disconnect();
    });
    worker_.join();
  }

  void start() {
    installLibvirtEventLoop(io_);
    std::weak_ptr<VmComponent> weak = weak_from_this();
    backend_.setEventHandler([weak](const LifecycleEvent& ev) {
      // On the io thread (libvirt's event loop): hand it to the worker.
      if (auto self = weak.lock()) asio::post(self->worker_, [s = self.get(), ev] { s->onEvent(ev); });
    });
    backend_.setCloseHandler([weak](std::string why) {
      if (auto self = weak.lock()) asio::post(self->worker_, [s = self.get(), why] { s->onClosed(why); });
    });
    asio::post(worker_, [this] { init(); });
    armReconcile();
    armTick();

    auto& svc = service_;
    svc.handle(LocalRequest::kVmApply, [weak](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
      auto self = weak.lock();
      if (!self) return reply(ipc::errorReply(LocalError::INTERNAL, "VM component is shutting down"));
      self->onWorker([s = self.get(), req, reply]() mutable {
        auto r = s->manager_->apply(req.vm_apply());
        LocalReply out;
        if (r) *out.mutable_apply() = std::move(*r);
        else out = errorOf(r.error());
        s->replyOnIo(std::move(reply), std::move(out));
      });
    });
    svc.handle(LocalRequest::kVmList, [weak](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
      auto self = weak.lock();
      if (!self) return reply(ipc::errorReply(LocalError::INTERNAL, "VM component is shutting down"));
      self->onWorker([s = self.get(), req, reply]() mutable {
        auto r = s->manager_->list(req.vm_list().with_stats());
        LocalReply out;
        if (r) *out.mutable_vm_list() = std::move(*r);
        else out = errorOf(r.error());
        s->replyOnIo(std::move(reply), std::move(out));
      });
    });
    svc.handle(LocalRequest::kVmConsole, [weak](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
      auto self = weak.lock();
      if (!self) return reply(ipc::errorReply(LocalError::INTERNAL, "VM component is shutting down"));
      self->onWorker([s = self.get(), req, reply]() mutable {
        auto r = s->manager_->console(req.vm_console());
        LocalReply out;
        if (r) *out.mutable_console() = std::move(*r);
        else out = errorOf(r.error());
        s->replyOnIo(std::move(reply), std::move(out));
      });
    });
    svc.handle(LocalRequest::kVmAction, [weak](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
      auto self = weak.lock();
      if (!self) return reply(ipc::errorReply(LocalError::INTERNAL, "VM component is shutting down"));
      self->onWorker([s = self.get(), req, reply]() mutable {
        s->manager_->action(req.vm_action(), [s, reply](Result<v1::VmInfo> r) mutable {
          LocalReply out;
          if (r) *out.mutable_vm() = std::move(*r);
          else out = errorOf(r.error());
          s->replyOnIo(std::move(reply), std::move(out));
        });
      });
    });
  }

  Health health() const override {
    std::lock_guard lk(mu_);
    std::string detail =
        fmt::format("libvirt {}, {} VM{} running ({})", connected_ ? "connected" : "disconnected", running_,
                    running_ == 1 ? "" : "s", accel_.empty() ? "accelerator not chosen yet" : accel_);
    // Not being connected is a state vmm recovers from by itself; it is reported, not "unhealthy".
    return {true, detail};
  }

 private:
  // Run `fn` on the worker once the manager exists (init is always the first task).
  template <class F>
  void onWorker(F fn) {
    asio::post(worker_, [this, fn = std::move(fn)]() mutable {
      fn();
      afterWork();
    });
  }

  void replyOnIo(ipc::Replier reply, LocalReply out) {
    asio::post(io_, [reply = std::move(reply), out = std::move(out)]() mutable { reply(std::move(out)); });
  }

  void publishOnIo(std::string kind, std::string subject, std::string detail) {
    std::weak_ptr<VmComponent> weak = weak_from_this();
    asio::post(io_, [weak, kind = std::move(kind), subject = std::move(subject), detail = std::move(detail)]() mutable {
      if (auto self = weak.lock()) self->service_.publish(std::move(kind), std::move(subject), std::move(detail));
    });
  }

  // ---- worker thread

  // Every domain this vmm defines carries its instance id, so two vmm instances on one libvirt daemon
  // (a test next to a demo, or a second node on a lab box) never take each other's guests for their own.
  std::string loadInstanceId() {
    auto path = cfg_.opts.stateDir / "instance-id";
    if (auto text = readFile(path, 256); text) {
      std::string id = *text;
      while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
      if (id.size() == 32 && id.find_first_not_of("0123456789abcdef") == std::string::npos) return id;
      LOG_WARN("VMs: {} is not an instance id; making a new one", path.string());
    }
    std::string bytes(16, '\0');
    std::ifstream("/dev/urandom", std::ios::binary).read(bytes.data(), 16);
    auto id = crypto::hex(bytes);
    // 0755: QEMU (its own user) must reach the overlays below it.
    if (auto st = makeDirs(cfg_.opts.stateDir, 0755); !st) LOG_ERR("VMs: {}", st.error().message);
    if (auto st = writeFileAtomic(path, id + "\n", 0600); !st)
      LOG_ERR("VMs: cannot store the instance id: {}; this run's domains will look foreign to the next", st.error().message);
    return id;
  }

  void init() {
    cfg_.opts.instance = loadInstanceId();
    backend_.setInstance(cfg_.opts.instance);
    auto choice = chooseAccel(cfg_.accel, cfg_.opts.stateDir / "accel-probe");
    LOG_NOTICE("VMs: accelerator {} ({})", choice.accel, choice.why);
    cfg_.opts.accel = choice.accel;
    HostInfo host;
    host.memTotalMib = memTotalMib();
    host.threads = std::max(1u, std::thread::hardware_concurrency());
    host.arch = hostArch();
    manager_ = std::make_unique<VmManager>(
        backend_, cfg_.opts, host,
        [this](std::string k, std::string s, std::string d) { publishOnIo(std::move(k), std::move(s), std::move(d)); });
    if (auto st = manager_->load(); !st) LOG_ERR("VMs: {}", st.error().message);
    {
      std::lock_guard lk(mu_);
      accel_ = choice.accel;
    }
    connect();
  }

  void connect() {
    if (auto st = backend_.connect(); !st) {
      LOG_WARN("VMs: {}; retrying in {} s", st.error().message, backoff_.count());
      scheduleReconnect();
      afterWork();
      return;
    }
    backoff_ = std::chrono::seconds(1);
    HostInfo host = manager_->host();
    if (auto archs = backend_.guestArchs(); archs) host.archs = *archs;
    manager_->setHost(host);
    LOG_INFO("VMs: connected to {}", backend_.uri());
    publishOnIo("vm.libvirt", backend_.uri(), "connected");
    manager_->reconcile("connected");
    afterWork();
  }

  void onClosed(const std::string& why) {
    if (!backend_.connected()) return;
    LOG_WARN("VMs: connection to {} closed ({}); reconnecting", backend_.uri(), why);
    backend_.disconnect();
    publishOnIo("vm.libvirt", backend_.uri(), "disconnected (" + why + ")");
    afterWork();
    scheduleReconnect();
  }

  void scheduleReconnect() {
    auto delay = backoff_;
    backoff_ = std::min(backoff_ * 2, std::chrono::seconds(30));
    std::weak_ptr<VmComponent> weak = weak_from_this();
    asio::post(io_, [weak, delay] {
      auto self = weak.lock();
      if (!self) return;
      self->reconnectTimer_.expires_after(delay);
      self->reconnectTimer_.async_wait([weak](boost::system::error_code ec) {
        auto s = weak.lock();
        if (ec || !s) return;
        asio::post(s->worker_, [p = s.get()] {
          if (!p->backend_.connected()) p->connect();
        });
      });
    });
  }

  void onEvent(const LifecycleEvent& ev) {
    if (!manager_) return;
    manager_->onEvent(ev);
    // Every lifecycle change is a reason to look again (a guest that powered itself off while it
    // should run is started again; an operator's stop is desired state, so it stays stopped).
    if (ev.state == "shutoff" || ev.state == "undefined" || ev.state == "crashed") manager_->reconcile("event");
    afterWork();
  }

  void afterWork() {
    std::lock_guard lk(mu_);
    connected_ = backend_.connected();
    if (manager_) running_ = manager_->runningCount();
  }

  // ---- io thread timers

  void armReconcile() {
    std::weak_ptr<VmComponent> weak = weak_from_this();
    reconcileTimer_.expires_after(cfg_.reconcileEvery);
    reconcileTimer_.async_wait([weak](boost::system::error_code ec) {
      auto self = weak.lock();
      if (ec || !self) return;
      self->onWorker([s = self.get()] { s->manager_->reconcile("timer"); });
      self->armReconcile();
    });
  }

  void armTick() {
    std::weak_ptr<VmComponent> weak = weak_from_this();
    tickTimer_.expires_after(std::chrono::milliseconds(500));
    tickTimer_.async_wait([weak](boost::system::error_code ec) {
      auto self = weak.lock();
      if (ec || !self) return;
      self->onWorker([s = self.get()] {
        if (s->manager_ && s->backend_.connected()) s->manager_->tick();
      });
      self->armTick();
    });
  }

  LocalService& service_;
  asio::io_context& io_;
  VmConfig cfg_;
  LibvirtBackend backend_;  // used on the worker only (its handlers are set before the worker starts)
  std::unique_ptr<VmManager> manager_;  // worker only
  std::chrono::seconds backoff_{1};     // worker only
  asio::steady_timer reconcileTimer_, tickTimer_, reconnectTimer_;
  mutable std::mutex mu_;
  bool connected_ = false;
  std::size_t running_ = 0;
  std::string accel_;
  // Last member: destroyed (after the destructor's join) before anything the tasks use.
  asio::thread_pool worker_{1};
};

}  // namespace

std::shared_ptr<Component> setupVms(ConfigReader& cfg, LocalService& service) {
  VmConfig c;
  c.uri = cfg.str("vms.uri", "qemu:///system");
  if (c.uri.empty()) cfg.fail("vms.uri", "must not be empty");
  c.accel = cfg.str("vms.accel", "auto");
  if (c.accel != "auto" && c.accel != "kvm" && c.accel != "tcg")
    cfg.fail("vms.accel", "must be auto, kvm or tcg, not '" + c.accel + "'");
  c.opts.stateDir = cfg.str("vms.state_dir", "/var/lib/outrider/vms");
  c.opts.logDir = cfg.str("vms.log_dir", "/var/log/outrider/vms");
  if (!c.opts.stateDir.is_absolute()) cfg.fail("vms.state_dir", "must be an absolute path");
  if (!c.opts.logDir.is_absolute()) cfg.fail("vms.log_dir", "must be an absolute path");
  c.opts.limits.memoryOvercommit = cfg.number("vms.memory_overcommit", 1.0, 0.1, 100.0);
  c.opts.limits.cpuOvercommit = cfg.number("vms.cpu_overcommit", 1.0, 0.1, 100.0);
  c.opts.stopTimeout = std::chrono::seconds(cfg.integer("vms.stop_timeout_s", 30, 1, 3600));
  c.opts.consoleMaxBytes = static_cast<std::uint64_t>(cfg.integer("vms.console_log_max_bytes", 1 << 20, 4096, 1ll << 32));
  c.reconcileEvery = std::chrono::seconds(cfg.integer("vms.reconcile_interval_s", 10, 1, 3600));
  auto comp = std::make_shared<VmComponent>(service, std::move(c));
  comp->start();
  return comp;
}

}  // namespace outrider::vmm
