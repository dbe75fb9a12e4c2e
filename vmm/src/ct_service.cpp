// The container component of outrider-vmm: reads [containers], builds the crun backend and the
// ContainerManager, and registers the ct_* and image_import handlers on the local service.
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <thread>

#include "outrider/common/log.hpp"
#include "outrider/vmm/component.hpp"
#include "outrider/vmm/ct_manager.hpp"

namespace outrider::vmm {

namespace {

namespace fs = std::filesystem;
using v1::LocalRequest;

class Containers final : public Component {
 public:
  explicit Containers(std::shared_ptr<ContainerManager> m) : m_(std::move(m)) {}
  Health health() const override { return m_->health(); }

 private:
  std::shared_ptr<ContainerManager> m_;
};

// outrider-ctshim: next to outrider-vmm (a build tree), else in LIBEXEC/outrider (an installed system:
// /usr/sbin/outrider-vmm and /usr/libexec/outrider/outrider-ctshim).
fs::path defaultShim() {
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "outrider-ctshim";
  auto beside = self.parent_path() / "outrider-ctshim";
  if (fs::exists(beside, ec)) return beside;
  return self.parent_path().parent_path() / "libexec" / "outrider" / "outrider-ctshim";
}

CtSettings readSettings(ConfigReader& cfg) {
  CtSettings s;
  s.crun = cfg.str("containers.crun", s.crun);
  if (s.crun.empty()) cfg.fail("containers.crun", "must not be empty");
  s.shim = cfg.str("containers.shim", "");
  if (s.shim.empty()) s.shim = defaultShim();
  auto absPath = [&](const char* key, fs::path def) {
    fs::path p = cfg.str(key, def.string());
    if (!p.is_absolute()) cfg.fail(key, "must be an absolute path");
    return p;
  };
  s.runtimeRoot = absPath("containers.runtime_root", s.runtimeRoot);
  s.imagesDir = absPath("containers.images_dir", s.imagesDir);
  s.stateDir = absPath("containers.state_dir", s.stateDir);
  s.cgroupRoot = absPath("containers.cgroup_root", s.cgroupRoot);
  s.cgroupParent = cfg.str("containers.cgroup_parent", s.cgroupParent);
  if (s.cgroupParent.empty() || s.cgroupParent.front() == '/' || s.cgroupParent.find("..") != std::string::npos)
    cfg.fail("containers.cgroup_parent", "must be a relative cgroup path without '..', e.g. \"outrider\"");
  s.logMaxBytes = static_cast<std::uint64_t>(cfg.integer("containers.log_max_bytes", 1 << 20, 4096, 1LL << 32));
  s.stopTimeoutS = static_cast<std::uint32_t>(cfg.integer("containers.stop_timeout_s", 10, 1, 3600));
  s.reconcileInterval =
      std::chrono::milliseconds(cfg.integer("containers.reconcile_interval_ms", 5000, 100, 3600 * 1000));
  return s;
}

}  // namespace

std::shared_ptr<Component> setupContainers(ConfigReader& cfg, LocalService& service) {
  CtSettings s = readSettings(cfg);
  auto runtime = std::make_shared<CrunRuntime>(s.crun, s.runtimeRoot, s.shim);
  unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
  LocalService* svc = &service;
  auto m = std::make_shared<ContainerManager>(
      service.io(), s, runtime,
      [svc](const std::string& name, const std::string& detail) {
        LOG_INFO("container {}: {}", name, detail);
        svc->publish("ct.state", name, detail);
      },
      cpus);
  // Start once the loop runs (the service is listening by then, so adoption events reach subscribers).
  boost::asio::post(service.io(), [m] { m->start(); });

  service.handle(LocalRequest::kCtApply, [m](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
    reply(m->apply(req.ct_apply()));
  });
  service.handle(LocalRequest::kCtList, [m](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
    reply(m->list(req.ct_list().with_stats()));
  });
  service.handle(LocalRequest::kCtAction, [m](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
    reply(m->action(req.ct_action()));
  });
  service.handle(LocalRequest::kCtLogs, [m](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
    reply(m->logs(req.ct_logs()));
  });
  service.handle(LocalRequest::kImageImport, [m](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
    m->importImage(req.image_import(), [reply](v1::LocalReply r) { reply(std::move(r)); });
  });
  return std::make_shared<Containers>(m);
}

}  // namespace outrider::vmm
