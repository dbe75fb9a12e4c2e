#include "outrider/common/local_service.hpp"

#include <grp.h>

#include <cerrno>
#include <cstdio>
#include <string_view>

#include "outrider/common/daemon.hpp"
#include "outrider/common/version.hpp"

namespace outrider {

using outrider::v1::LocalError;
using outrider::v1::LocalReply;
using outrider::v1::LocalRequest;

namespace {

enum class GroupLookup { found, missing, failed };

GroupLookup lookupGroup(const std::string& name, gid_t& out, int& err) {
  std::vector<char> buf(1024);
  for (;;) {
    group gr{};
    group* res = nullptr;
    int rc = ::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &res);
    if (rc == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc != 0) {
      err = rc;
      return GroupLookup::failed;
    }
    if (!res) return GroupLookup::missing;
    out = gr.gr_gid;
    return GroupLookup::found;
  }
}

}  // namespace

LocalServiceConfig readLocalServiceConfig(ConfigReader& cfg, const std::filesystem::path& defaultSocket) {
  LocalServiceConfig out;
  out.socket = cfg.str("api.socket", defaultSocket.string());
  if (out.socket.empty()) cfg.fail("api.socket", "must not be empty");
  out.group = cfg.str("api.group", out.group);
  std::string level = cfg.str("log.level", "info");
  if (!log::parseLevel(level, out.logLevel))
    cfg.fail("log.level", "unknown level '" + level + "' (expected err, warning, notice, info or debug)");
  return out;
}

LocalService::LocalService(boost::asio::io_context& io, std::string daemon, LocalServiceConfig cfg)
    : io_(io), daemon_(std::move(daemon)), cfg_(std::move(cfg)), started_(std::chrono::steady_clock::now()) {}

LocalService::~LocalService() { stop(); }

void LocalService::handle(LocalRequest::BodyCase which, LocalHandler handler) {
  handlers_[static_cast<int>(which)] = std::move(handler);
}

void LocalService::setHealth(std::function<Health()> probe) { health_ = std::move(probe); }

Status LocalService::start() {
  ipc::ServerOptions opts;
  opts.socketPath = cfg_.socket;
  if (!cfg_.group.empty()) {
    gid_t gid = 0;
    int err = 0;
    switch (lookupGroup(cfg_.group, gid, err)) {
      case GroupLookup::found:
        opts.socketGroup = gid;
        opts.access.group = gid;
        break;
      case GroupLookup::missing:
        // Without the group only root and our own uid may connect, which is safe; so not fatal.
        LOG_WARN("{}: group '{}' (api.group) does not exist, socket {} keeps its default group, ignoring", daemon_,
                 cfg_.group, cfg_.socket.string());
        break;
      case GroupLookup::failed:
        return errnoError("look up group '" + cfg_.group + "'", err);
    }
  }
  server_ = std::make_unique<ipc::Server>(
      io_, std::move(opts),
      [this](const ipc::PeerCred& peer, const LocalRequest& req, ipc::Replier reply) {
        dispatch(peer, req, std::move(reply));
      });
  if (auto st = server_->start(); !st) {
    server_.reset();
    return Error{"serve local API on " + cfg_.socket.string() + ": " + st.error().message, st.error().code};
  }
  LOG_INFO("{}: local API on {}", daemon_, cfg_.socket.string());
  return {};
}

void LocalService::stop() {
  if (server_) server_->stop();
}

void LocalService::publish(std::string kind, std::string subject, std::string detail) {
  if (!server_) return;
  v1::LocalEvent ev;
  ev.set_seq(++seq_);
  ev.set_at_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count());
  ev.set_source(daemon_);
  ev.set_kind(std::move(kind));
  ev.set_subject(std::move(subject));
  ev.set_detail(std::move(detail));
  server_->publish(ev);
}

void LocalService::dispatch(const ipc::PeerCred& peer, const LocalRequest& req, ipc::Replier reply) {
  if (auto it = handlers_.find(static_cast<int>(req.body_case())); it != handlers_.end()) {
    it->second(peer, req, std::move(reply));
    return;
  }
  switch (req.body_case()) {
    case LocalRequest::kHealth: {
      Health h = health_ ? health_() : Health{};
      LocalReply r;
      auto* body = r.mutable_health();
      body->set_daemon(daemon_);
      body->set_version(std::string(version()));
      body->set_healthy(h.healthy);
      body->set_detail(std::move(h.detail));
      body->set_uptime_s(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_).count()));
      reply(std::move(r));
      return;
    }
    case LocalRequest::BODY_NOT_SET:
      // A body added to the contract after this daemon was built parses as "not set": that is version
      // skew, and the caller should hear "unsupported", not "malformed".
      reply(ipc::errorReply(LocalError::UNSUPPORTED,
                            daemon_ + " " + std::string(version()) + " does not know this request type"));
      return;
    default:
      reply(ipc::errorReply(LocalError::UNSUPPORTED, daemon_ + " does not serve request type " +
                                                         std::to_string(static_cast<int>(req.body_case()))));
      return;
  }
}

namespace {

struct CommandLine {
  std::filesystem::path config;
  bool explicitConfig = false;
  bool version = false;
  bool help = false;
};

Result<CommandLine> parseCommandLine(int argc, char** argv, const std::filesystem::path& defaultConfig) {
  CommandLine cl;
  cl.config = defaultConfig;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--version") {
      cl.version = true;
    } else if (a == "--help" || a == "-h") {
      cl.help = true;
    } else if (a == "--config") {
      if (i + 1 >= argc) return Error{"--config needs a path"};
      cl.config = argv[++i];
      cl.explicitConfig = true;
    } else if (a.rfind("--config=", 0) == 0) {
      cl.config = std::string(a.substr(9));
      cl.explicitConfig = true;
    } else {
      return Error{"unknown argument '" + std::string(a) + "'"};
    }
  }
  if (cl.explicitConfig && cl.config.empty()) return Error{"--config needs a path"};
  return cl;
}

ConfigReader loadConfig(const CommandLine& cl) {
  // The package ships a default file; without it every key has its default. A file named on the command
  // line, though, must exist: a typo there would otherwise silently run with defaults.
  std::error_code ec;
  if (!cl.explicitConfig && !std::filesystem::exists(cl.config, ec)) return ConfigReader::parse("", cl.config.string());
  return ConfigReader::load(cl.config);
}

}  // namespace

int runLocalDaemon(const LocalDaemonSpec& spec, int argc, char** argv) {
  auto cl = parseCommandLine(argc, argv, spec.defaultConfig);
  if (!cl) {
    std::fprintf(stderr, "%s: %s\nusage: %s [--config PATH] [--version]\n", spec.name.c_str(),
                 cl.error().message.c_str(), spec.name.c_str());
    return 2;
  }
  if (cl->help) {
    std::printf("usage: %s [--config PATH] [--version]\n  --config PATH  configuration file (default %s)\n",
                spec.name.c_str(), spec.defaultConfig.c_str());
    return 0;
  }
  if (cl->version) {
    std::printf("%s %.*s\n", spec.name.c_str(), static_cast<int>(version().size()), version().data());
    return 0;
  }

  LOG_INFO("{} {} starting", spec.name, version());
  DaemonRuntime runtime(spec.name);
  std::unique_ptr<LocalService> service;
  try {
    ConfigReader cfg = loadConfig(*cl);
    auto api = readLocalServiceConfig(cfg, spec.defaultSocket);
    log::setLevel(api.logLevel);
    service = std::make_unique<LocalService>(runtime.io(), spec.name, std::move(api));
    if (spec.setup) spec.setup(cfg, *service);
    cfg.finish();
  } catch (const ConfigError& e) {
    LOG_ERR("{}", e.what());
    return 2;
  }

  if (auto st = service->start(); !st) {
    LOG_ERR("{}: {}", spec.name, st.error().message);
    return 1;
  }
  runtime.onStop([&service] { service->stop(); });
  int rc = runtime.run();
  service->stop();
  return rc;
}

}  // namespace outrider
