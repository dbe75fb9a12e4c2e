#include "outrider/netd/service.hpp"

#include <boost/asio/post.hpp>
#include <set>

#include "outrider/common/manifest.hpp"
#include "outrider/common/tunnel_spec.hpp"
#include "outrider/netd/manager.hpp"

namespace outrider::netd {

using outrider::v1::LocalError;
using outrider::v1::LocalReply;
using outrider::v1::LocalRequest;

namespace {

NetdOptions readOptions(ConfigReader& cfg) {
  NetdOptions o;
  o.keyFile = cfg.str("wireguard.key_file", o.keyFile.string());
  if (o.keyFile.empty()) cfg.fail("wireguard.key_file", "must not be empty");
  o.stateDir = cfg.str("wireguard.state_dir", o.stateDir.string());
  if (o.stateDir.empty()) cfg.fail("wireguard.state_dir", "must not be empty");
  o.backend.mode = cfg.str("wireguard.backend", o.backend.mode);
  if (o.backend.mode != "auto" && o.backend.mode != "kernel" && o.backend.mode != "userspace")
    cfg.fail("wireguard.backend", "must be \"auto\", \"kernel\" or \"userspace\", not \"" + o.backend.mode + "\"");
  o.backend.wireguardGo = cfg.str("wireguard.wireguard_go", o.backend.wireguardGo);
  if (o.backend.wireguardGo.empty()) cfg.fail("wireguard.wireguard_go", "must not be empty");
  o.backend.uapiDir = cfg.str("wireguard.uapi_dir", o.backend.uapiDir.string());
  if (o.backend.uapiDir.empty()) cfg.fail("wireguard.uapi_dir", "must not be empty");
  return o;
}

}  // namespace

LocalDaemonSpec daemonSpec() {
  LocalDaemonSpec spec;
  spec.name = std::string(kDaemonName);
  spec.defaultConfig = std::string(kDefaultConfig);
  spec.defaultSocket = std::string(kDefaultSocket);
  spec.setup = [](ConfigReader& cfg, LocalService& service) {
    auto opts = readOptions(cfg);
    cfg.claim("tunnel");
    auto tunnels = parseTunnels(cfg.text(), cfg.source());
    if (!tunnels) throw ConfigError(tunnels.error().message);
    std::set<std::string> names;
    for (const auto& t : *tunnels) {
      if (auto st = validateTunnelSpec(t); !st) cfg.fail("tunnel", st.error().message);
      if (!names.insert(t.interface()).second)
        cfg.fail("tunnel", "tunnel '" + t.interface() + "': interface: listed twice");
    }
    auto mgr = std::make_shared<TunnelManager>(
        service.io(), std::move(opts), std::move(*tunnels),
        [&service](std::string kind, std::string subject, std::string detail) {
          service.publish(std::move(kind), std::move(subject), std::move(detail));
        });
    service.handle(LocalRequest::kTunnelApply, [mgr](const ipc::PeerCred&, const LocalRequest& req, ipc::Replier reply) {
      auto r = mgr->apply(req.tunnel_apply());
      if (!r) {
        reply(ipc::errorReply(r.error().code == EINVAL ? LocalError::BAD_REQUEST : LocalError::INTERNAL,
                              r.error().message));
        return;
      }
      LocalReply out;
      *out.mutable_apply() = std::move(*r);
      reply(std::move(out));
    });
    service.handle(LocalRequest::kTunnelStatus, [mgr](const ipc::PeerCred&, const LocalRequest&, ipc::Replier reply) {
      LocalReply out;
      *out.mutable_tunnels() = mgr->status();
      reply(std::move(out));
    });
    service.setHealth([mgr] { return mgr->health(); });
    // Tunnels come up once the loop runs (not during setup: a config error found later must not leave
    // devices or a new key behind).
    boost::asio::post(service.io(), [w = std::weak_ptr<TunnelManager>(mgr)] {
      if (auto m = w.lock()) m->start();
    });
  };
  return spec;
}

int run(int argc, char** argv) { return runLocalDaemon(daemonSpec(), argc, argv); }

}  // namespace outrider::netd
