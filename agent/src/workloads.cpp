#include "outrider/agent/workloads.hpp"

#include <fmt/format.h>

#include "outrider/agent/journal.hpp"
#include "outrider/common/atomic_file.hpp"
#include "outrider/common/log.hpp"

namespace outrider::agent {

namespace v1 = outrider::v1;
using Reply = v1::CommandReply;

namespace {

constexpr std::string_view kMagic = "ORMF";
constexpr std::size_t kHeader = 8;

void putLe32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
std::uint32_t getLe32(std::string_view in) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  return v;
}

Reply failed(std::string message) {
  Reply r;
  r.set_kind(Reply::FAILED);
  r.set_message(std::move(message));
  return r;
}

std::string localErrorText(const v1::LocalError& e) {
  std::string code = v1::LocalError::Code_Name(e.code());
  for (auto& c : code) c = (c == '_') ? ' ' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return code + ": " + e.message();
}

bool isError(const v1::LocalReply& r) { return r.has_error() && r.error().code() != v1::LocalError::CODE_UNSPECIFIED; }

}  // namespace

std::string encodeManifestFile(const v1::NodeManifest& m) {
  std::string payload = m.SerializeAsString();
  std::string out(kMagic);
  putLe32(out, crc32c(payload));
  out += payload;
  return out;
}

Result<v1::NodeManifest> decodeManifestFile(std::string_view data) {
  if (data.size() < kHeader || data.substr(0, 4) != kMagic) return Error{"not a manifest file (bad header)"};
  auto payload = data.substr(kHeader);
  if (crc32c(payload) != getLe32(data.substr(4, 4))) return Error{"checksum mismatch"};
  v1::NodeManifest m;
  if (!m.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) return Error{"payload does not decode"};
  return m;
}

Workloads::Workloads(boost::asio::io_context& io, DaemonMonitor& daemons, WorkloadOptions opts, ChangedFn changed)
    : io_(io), daemons_(daemons), opts_(std::move(opts)), changed_(std::move(changed)), resync_(io) {}

Status Workloads::load() {
  auto path = opts_.stateDir / "manifest.pb";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return {};
  auto data = readFile(path);
  if (!data) return Error{fmt::format("{}: {}", path.string(), data.error().message)};
  auto m = decodeManifestFile(*data);
  if (!m) {
    auto aside = path;
    aside += ".damaged";
    std::filesystem::rename(path, aside, ec);
    LOG_ERR("{}: {}; moved to {}; vmm and netd keep the desired state they hold until the hub applies a manifest",
            path.string(), m.error().message, aside.string());
    return {};
  }
  manifest_ = std::move(*m);
  LOG_INFO("desired state: manifest version {} ({} VMs, {} containers, {} tunnels)", manifest_->version(),
           manifest_->vms_size(), manifest_->containers_size(), manifest_->tunnels_size());
  return {};
}

void Workloads::start() { armResync(); }

void Workloads::stop() {
  stopped_ = true;
  resync_.cancel();
}

void Workloads::armResync() {
  resync_.expires_after(opts_.resync);
  resync_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopped_) return;
    pushAll("periodic resync");
    armResync();
  });
}

void Workloads::daemonChanged(const v1::DaemonHealth& h) {
  if (stopped_ || h.state() != v1::DaemonHealth::HEALTHY) return;
  if (manifest_) {
    push(h.name(), [this, name = h.name()](Result<v1::ApplyResult> r) {
      if (!r) LOG_WARN("desired state to {}: {}", name, r.error().message);
      else LOG_INFO("desired state handed to {} (manifest version {})", name, r->manifest_version());
      if (name == "netd" && !stopped_) learnWireguardKey();
    });
  }
  if (h.name() == "netd") learnWireguardKey();
}

void Workloads::learnWireguardKey() {
  v1::LocalRequest req;
  req.mutable_tunnel_status();
  daemons_.call("netd", std::move(req), opts_.queryTimeout, [this](Result<v1::LocalReply> r) {
    if (stopped_ || !r || isError(*r)) return;
    for (const auto& t : r->tunnels().tunnels())
      if (!t.public_key().empty() && t.public_key() != wgKey_) {
        wgKey_ = t.public_key();
        if (changed_) changed_();
        return;
      }
  });
}

void Workloads::pushAll(const char* why) {
  if (!manifest_) return;
  for (const char* d : {"vmm", "netd"})
    push(d, [d, why](Result<v1::ApplyResult> r) {
      if (!r) LOG_WARN("desired state to {} ({}): {}", d, why, r.error().message);
    });
}

void Workloads::push(const std::string& daemon, std::function<void(Result<v1::ApplyResult>)> done) {
  if (!manifest_) return done(Error{"no manifest"});
  const auto& m = *manifest_;
  // Each request is answered by one component; the results are merged in request order.
  std::vector<v1::LocalRequest> reqs;
  if (daemon == "vmm") {
    v1::LocalRequest vms;
    auto* va = vms.mutable_vm_apply();
    va->set_manifest_version(m.version());
    *va->mutable_vms() = m.vms();
    reqs.push_back(std::move(vms));
    v1::LocalRequest cts;
    auto* ca = cts.mutable_ct_apply();
    ca->set_manifest_version(m.version());
    *ca->mutable_containers() = m.containers();
    reqs.push_back(std::move(cts));
  } else {
    v1::LocalRequest t;
    auto* ta = t.mutable_tunnel_apply();
    ta->set_manifest_version(m.version());
    *ta->mutable_tunnels() = m.tunnels();
    reqs.push_back(std::move(t));
  }
  struct State {
    std::size_t left;
    v1::ApplyResult merged;
    std::string error;
    std::function<void(Result<v1::ApplyResult>)> done;
  };
  auto st = std::make_shared<State>();
  st->left = reqs.size();
  st->merged.set_manifest_version(m.version());
  st->done = std::move(done);
  for (auto& req : reqs) {
    const char* what = req.has_vm_apply() ? "VMs" : req.has_ct_apply() ? "containers" : "tunnels";
    daemons_.call(daemon, std::move(req), opts_.applyTimeout, [st, daemon, what](Result<v1::LocalReply> r) {
      if (!r) {
        if (st->error.empty()) st->error = fmt::format("{} unreachable: {}", daemon, r.error().message);
      } else if (isError(*r)) {
        st->error += (st->error.empty() ? "" : "; ") + fmt::format("{}: {}", what, localErrorText(r->error()));
      } else {
        for (const auto& item : r->apply().results()) *st->merged.add_results() = item;
        if (!r->apply().tunnel().empty()) st->merged.set_tunnel(r->apply().tunnel());
      }
      if (--st->left) return;
      if (!st->error.empty()) return st->done(Error{st->error});
      st->done(std::move(st->merged));
    });
  }
}

void Workloads::apply(const v1::NodeManifest& m, CommandProcessor::DoneFn done) {
  if (manifest_) {
    if (m.version() < manifest_->version())
      return done(failed(fmt::format("manifest version {} is older than version {} the node holds; nothing changed",
                                     m.version(), manifest_->version())));
    if (m.version() == manifest_->version() && m.SerializeAsString() != manifest_->SerializeAsString())
      return done(failed(fmt::format("manifest version {} is already applied with different content; "
                                     "raise the version; nothing changed",
                                     m.version())));
  }
  // Persist first: the desired state must survive a crash between here and the daemons.
  auto path = opts_.stateDir / "manifest.pb";
  if (auto s = writeFileAtomic(path, encodeManifestFile(m), 0640); !s)
    return done(failed(fmt::format("cannot store the manifest: {}; nothing changed", s.error().message)));
  bool changed = !manifest_ || manifest_->version() != m.version();
  manifest_ = m;
  if (changed) {
    LOG_NOTICE("desired state: manifest version {} ({} VMs, {} containers, {} tunnels)", m.version(), m.vms_size(),
               m.containers_size(), m.tunnels_size());
    if (changed_) changed_();
  }

  struct Gather {
    int left = 2;
    v1::ApplyResult result;
    std::vector<std::string> problems;
    CommandProcessor::DoneFn done;
  };
  auto g = std::make_shared<Gather>();
  g->result.set_manifest_version(m.version());
  g->done = std::move(done);
  auto collect = [g](Result<v1::ApplyResult> r) {
    if (!r) {
      g->problems.push_back(r.error().message);
    } else {
      for (const auto& item : r->results()) {
        *g->result.add_results() = item;
        if (!item.ok()) g->problems.push_back(fmt::format("{} '{}': {}", item.kind(), item.name(), item.error()));
      }
      if (!r->tunnel().empty()) g->result.set_tunnel(r->tunnel());
    }
    if (--g->left) return;
    Reply reply;
    *reply.mutable_apply() = g->result;
    if (g->problems.empty()) {
      reply.set_kind(Reply::SUCCEEDED);
      reply.set_message(fmt::format("manifest version {} applied: {} item(s)", g->result.manifest_version(),
                                    g->result.results_size()));
    } else {
      reply.set_kind(Reply::FAILED);
      std::string all;
      for (const auto& p : g->problems) all += (all.empty() ? "" : "; ") + p;
      reply.set_message(fmt::format("manifest version {} stored, not fully applied (the node keeps trying): {}",
                                    g->result.manifest_version(), all));
    }
    g->done(std::move(reply));
  };
  push("vmm", collect);
  // netd makes the node's key with its first tunnel: learn it once the tunnels are applied.
  push("netd", [this, collect](Result<v1::ApplyResult> r) {
    if (r && !stopped_) learnWireguardKey();
    collect(std::move(r));
  });
}

void Workloads::query(const std::string& daemon, v1::LocalRequest req, std::chrono::milliseconds timeout,
                      std::function<void(Reply& r, const v1::LocalReply& lr)> fill, CommandProcessor::DoneFn done) {
  daemons_.call(daemon, std::move(req), timeout,
                [daemon, fill = std::move(fill), done = std::move(done)](Result<v1::LocalReply> r) {
                  if (!r) return done(failed(fmt::format("{} unreachable: {}", daemon, r.error().message)));
                  if (isError(*r)) return done(failed(localErrorText(r->error())));
                  Reply reply;
                  reply.set_kind(Reply::SUCCEEDED);
                  fill(reply, *r);
                  done(std::move(reply));
                });
}

void Workloads::run(const Command& cmd, CommandProcessor::DoneFn done) {
  std::visit(
      [&](const auto& c) {
        using T = std::decay_t<decltype(c)>;
        if constexpr (std::is_same_v<T, ApplyCommand>) {
          apply(c.manifest, std::move(done));
        } else if constexpr (std::is_same_v<T, VmCommand>) {
          const auto& op = c.op;
          v1::LocalRequest req;
          auto timeout = opts_.queryTimeout;
          switch (op.op()) {
            case v1::VmCommand::LIST:
              req.mutable_vm_list()->set_with_stats(true);
              return query("vmm", std::move(req), timeout,
                           [](Reply& r, const v1::LocalReply& lr) { *r.mutable_vm_list() = lr.vm_list(); }, std::move(done));
            case v1::VmCommand::CONSOLE:
              req.mutable_vm_console()->set_name(op.name());
              req.mutable_vm_console()->set_max_bytes(op.max_bytes() ? op.max_bytes() : 64u << 10);
              return query("vmm", std::move(req), timeout,
                           [](Reply& r, const v1::LocalReply& lr) { *r.mutable_console() = lr.console(); }, std::move(done));
            default: {
              auto* a = req.mutable_vm_action();
              a->set_name(op.name());
              a->set_timeout_s(op.timeout_s());
              a->set_action(op.op() == v1::VmCommand::START    ? v1::VmActionRequest::START
                            : op.op() == v1::VmCommand::STOP   ? v1::VmActionRequest::STOP
                            : op.op() == v1::VmCommand::REBOOT ? v1::VmActionRequest::REBOOT
                                                               : v1::VmActionRequest::DELETE);
              // A graceful stop may take its whole timeout before the destroy.
              timeout = opts_.applyTimeout + std::chrono::seconds(op.timeout_s());
              return query("vmm", std::move(req), timeout,
                           [](Reply& r, const v1::LocalReply& lr) {
                             *r.mutable_vm() = lr.vm();
                             r.set_message(fmt::format("vm {}: {}", lr.vm().name(), lr.vm().state()));
                           },
                           std::move(done));
            }
          }
        } else if constexpr (std::is_same_v<T, ContainerCommand>) {
          const auto& op = c.op;
          v1::LocalRequest req;
          auto timeout = opts_.queryTimeout;
          switch (op.op()) {
            case v1::ContainerCommand::LIST:
              req.mutable_ct_list()->set_with_stats(true);
              return query("vmm", std::move(req), timeout,
                           [](Reply& r, const v1::LocalReply& lr) { *r.mutable_ct_list() = lr.ct_list(); }, std::move(done));
            case v1::ContainerCommand::LOGS:
              req.mutable_ct_logs()->set_name(op.name());
              req.mutable_ct_logs()->set_max_bytes(op.max_bytes() ? op.max_bytes() : 64u << 10);
              return query("vmm", std::move(req), timeout,
                           [](Reply& r, const v1::LocalReply& lr) { *r.mutable_logs() = lr.logs(); }, std::move(done));
            default: {
              auto* a = req.mutable_ct_action();
              a->set_name(op.name());
              a->set_timeout_s(op.timeout_s());
              a->set_action(op.op() == v1::ContainerCommand::START  ? v1::CtActionRequest::START
                            : op.op() == v1::ContainerCommand::STOP ? v1::CtActionRequest::STOP
                                                                    : v1::CtActionRequest::DELETE);
              timeout = opts_.applyTimeout + std::chrono::seconds(op.timeout_s());
              return query("vmm", std::move(req), timeout,
                           [](Reply& r, const v1::LocalReply& lr) {
                             *r.mutable_ct() = lr.ct();
                             r.set_message(fmt::format("container {}: {}", lr.ct().name(), lr.ct().state()));
                           },
                           std::move(done));
            }
          }
        } else if constexpr (std::is_same_v<T, TunnelCommand>) {
          v1::LocalRequest req;
          req.mutable_tunnel_status();
          return query("netd", std::move(req), opts_.queryTimeout,
                       [](Reply& r, const v1::LocalReply& lr) { *r.mutable_tunnels() = lr.tunnels(); }, std::move(done));
        } else {
          done(failed("not a workload command"));
        }
      },
      cmd);
}

}  // namespace outrider::agent
