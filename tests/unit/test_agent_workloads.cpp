// The agent's desired state and workload commands, against fake vmm and netd daemons behind the real
// local socket protocol (ipc::Server), so no libvirt, crun or WireGuard is needed here.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>

#include "outrider/agent/daemon_monitor.hpp"
#include "outrider/agent/processor.hpp"
#include "outrider/agent/workloads.hpp"
#include "outrider/common/atomic_file.hpp"
#include "outrider/common/ipc.hpp"
#include "support/process.hpp"
#include "unit/test_ipc_support.hpp"

using namespace outrider;
using namespace outrider::agent;
namespace v1 = outrider::v1;
using Reply = v1::CommandReply;

namespace {

v1::NodeManifest sampleManifest(std::uint64_t version) {
  v1::NodeManifest m;
  m.set_version(version);
  auto* vm = m.add_vms();
  vm->set_name("web");
  vm->set_vcpus(1);
  vm->set_memory_mib(128);
  vm->mutable_kernel()->set_kernel("/k");
  auto* ct = m.add_containers();
  ct->set_name("sensor");
  ct->set_image("busybox");
  auto* t = m.add_tunnels();
  t->set_interface("wg-x");
  t->add_addresses("10.99.100.10/24");
  auto* hub = t->add_hubs();
  hub->set_name("home");
  hub->set_endpoint("192.0.2.1:51820");
  hub->set_public_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
  hub->add_allowed_ips("10.99.200.0/24");
  hub->set_probe_address("10.99.100.1");
  return m;
}

// A daemon that answers the requests the agent sends, and remembers them.
struct FakeDaemon {
  std::vector<v1::LocalRequest> seen;
  std::function<v1::LocalReply(const v1::LocalRequest&)> answer;
  std::unique_ptr<ipc::Server> server;

  FakeDaemon(boost::asio::io_context& io, std::filesystem::path sock) {
    ipc::ServerOptions o;
    o.socketPath = std::move(sock);
    server = std::make_unique<ipc::Server>(io, o, [this](const ipc::PeerCred&, const v1::LocalRequest& req, ipc::Replier reply) {
      seen.push_back(req);
      reply(answer(req));
    });
    REQUIRE(server->start());
  }
  std::size_t count(v1::LocalRequest::BodyCase which) const {
    return static_cast<std::size_t>(std::count_if(seen.begin(), seen.end(), [&](const auto& r) { return r.body_case() == which; }));
  }
};

v1::LocalReply okApply(const v1::LocalRequest& req, const char* kind) {
  v1::LocalReply r;
  auto* a = r.mutable_apply();
  auto add = [&](const std::string& name) {
    auto* item = a->add_results();
    item->set_kind(kind);
    item->set_name(name);
    item->set_ok(true);
    item->set_action("started");
  };
  if (req.has_vm_apply()) {
    a->set_manifest_version(req.vm_apply().manifest_version());
    for (const auto& vm : req.vm_apply().vms()) add(vm.name());
  } else if (req.has_ct_apply()) {
    for (const auto& c : req.ct_apply().containers()) add(c.name());
  } else if (req.has_tunnel_apply()) {
    for (const auto& t : req.tunnel_apply().tunnels()) add(t.interface());
    a->set_tunnel("1 tunnel up");
  }
  return r;
}

struct Fixture {
  boost::asio::io_context io;
  test::TempDir dir;
  std::optional<FakeDaemon> vmm, netd;
  std::unique_ptr<DaemonMonitor> monitor;
  std::unique_ptr<Workloads> workloads;
  int changed = 0;

  Fixture(bool withNetd = true) {
    vmm.emplace(io, dir.path() / "vmm.sock");
    vmm->answer = [](const v1::LocalRequest& req) {
      if (req.has_vm_list()) {
        v1::LocalReply r;
        auto* vm = r.mutable_vm_list()->add_vms();
        vm->set_name("web");
        vm->set_state("running");
        return r;
      }
      if (req.has_vm_action() && req.vm_action().name() != "web")
        return ipc::errorReply(v1::LocalError::NOT_FOUND, "no VM named '" + req.vm_action().name() + "'");
      if (req.has_vm_action()) {
        v1::LocalReply r;
        r.mutable_vm()->set_name("web");
        r.mutable_vm()->set_state("running");
        return r;
      }
      return okApply(req, req.has_vm_apply() ? "vm" : "container");
    };
    if (withNetd) {
      netd.emplace(io, dir.path() / "netd.sock");
      netd->answer = [](const v1::LocalRequest& req) {
        if (req.has_tunnel_status()) {
          v1::LocalReply r;
          auto* t = r.mutable_tunnels()->add_tunnels();
          t->set_interface("wg-x");
          t->set_public_key("cHVia2V5");
          return r;
        }
        return okApply(req, "tunnel");
      };
    }
    monitor = std::make_unique<DaemonMonitor>(
        io, std::vector<DaemonMonitor::Target>{{"vmm", dir.path() / "vmm.sock"}, {"netd", dir.path() / "netd.sock"}},
        std::chrono::seconds(60), [](const v1::DaemonHealth&) {}, [](const std::string&, const v1::LocalEvent&) {});
    workloads = std::make_unique<Workloads>(io, *monitor, WorkloadOptions{.stateDir = dir.path()}, [this] { ++changed; });
    REQUIRE(workloads->load());
  }
  ~Fixture() {
    workloads->stop();
    monitor->stop();
  }

  Reply run(Command cmd) {
    std::optional<Reply> out;
    workloads->run(cmd, [&](Reply r) { out = std::move(r); });
    REQUIRE(test::runUntil(io, [&] { return out.has_value(); }, std::chrono::seconds(10)));
    return *out;
  }
};

}  // namespace

TEST_CASE("apply stores the manifest, hands it to vmm and netd, and reports every item") {
  Fixture f;
  auto r = f.run(ApplyCommand{sampleManifest(3)});
  CHECK_MESSAGE(r.kind() == Reply::SUCCEEDED, r.message());
  REQUIRE(r.has_apply());
  CHECK(r.apply().manifest_version() == 3);
  CHECK(r.apply().results_size() == 3);
  CHECK(r.apply().tunnel() == "1 tunnel up");
  CHECK(f.vmm->count(v1::LocalRequest::kVmApply) == 1);
  CHECK(f.vmm->count(v1::LocalRequest::kCtApply) == 1);
  REQUIRE(f.netd->count(v1::LocalRequest::kTunnelApply) == 1);
  CHECK(f.vmm->seen[0].vm_apply().vms(0).name() == "web");
  CHECK(f.vmm->seen[0].vm_apply().manifest_version() == 3);
  CHECK(f.workloads->manifestVersion() == 3);
  CHECK(f.changed == 1);

  // It survives a restart of the agent.
  auto again = std::make_unique<Workloads>(f.io, *f.monitor, WorkloadOptions{.stateDir = f.dir.path()}, [] {});
  REQUIRE(again->load());
  CHECK(again->manifestVersion() == 3);
}

TEST_CASE("an older version, or the same version with other content, changes nothing") {
  Fixture f;
  REQUIRE(f.run(ApplyCommand{sampleManifest(5)}).kind() == Reply::SUCCEEDED);
  auto stored = readFile(f.dir.path() / "manifest.pb");
  REQUIRE(stored);

  auto older = f.run(ApplyCommand{sampleManifest(4)});
  CHECK(older.kind() == Reply::FAILED);
  CHECK(older.message().find("older than version 5") != std::string::npos);

  auto other = sampleManifest(5);
  other.mutable_vms(0)->set_memory_mib(256);
  auto clash = f.run(ApplyCommand{other});
  CHECK(clash.kind() == Reply::FAILED);
  CHECK(clash.message().find("raise the version") != std::string::npos);

  CHECK(f.vmm->count(v1::LocalRequest::kVmApply) == 1);  // neither reached vmm
  CHECK(*readFile(f.dir.path() / "manifest.pb") == *stored);

  // The very same manifest again is fine (a hub retry), and is handed over again.
  CHECK(f.run(ApplyCommand{sampleManifest(5)}).kind() == Reply::SUCCEEDED);
  CHECK(f.vmm->count(v1::LocalRequest::kVmApply) == 2);
}

TEST_CASE("an item vmm could not apply fails the command, and the manifest stays the desired state") {
  Fixture f;
  f.vmm->answer = [](const v1::LocalRequest& req) {
    auto r = okApply(req, req.has_vm_apply() ? "vm" : "container");
    if (req.has_vm_apply()) {
      auto* item = r.mutable_apply()->mutable_results(0);
      item->set_ok(false);
      item->set_error("base image /k not found");
    }
    return r;
  };
  auto r = f.run(ApplyCommand{sampleManifest(2)});
  CHECK(r.kind() == Reply::FAILED);
  CHECK(r.message().find("vm 'web': base image /k not found") != std::string::npos);
  CHECK(r.apply().results_size() == 3);
  CHECK(f.workloads->manifestVersion() == 2);
}

TEST_CASE("a daemon that is down: the manifest is stored and handed over when it is back") {
  Fixture f(/*withNetd=*/false);
  auto r = f.run(ApplyCommand{sampleManifest(1)});
  CHECK(r.kind() == Reply::FAILED);
  CHECK(r.message().find("netd unreachable") != std::string::npos);
  CHECK(f.workloads->manifestVersion() == 1);

  f.netd.emplace(f.io, f.dir.path() / "netd.sock");
  f.netd->answer = [](const v1::LocalRequest& req) { return okApply(req, "tunnel"); };
  v1::DaemonHealth h;
  h.set_name("netd");
  h.set_state(v1::DaemonHealth::HEALTHY);
  f.workloads->daemonChanged(h);
  REQUIRE(test::runUntil(f.io, [&] { return f.netd->count(v1::LocalRequest::kTunnelApply) == 1; }));
  CHECK(f.netd->seen[0].tunnel_apply().tunnels(0).interface() == "wg-x");
}

TEST_CASE("vm commands map onto vmm requests and its errors") {
  Fixture f;
  v1::VmCommand list;
  list.set_op(v1::VmCommand::LIST);
  auto r = f.run(VmCommand{list});
  REQUIRE(r.kind() == Reply::SUCCEEDED);
  REQUIRE(r.vm_list().vms_size() == 1);
  CHECK(r.vm_list().vms(0).state() == "running");
  CHECK(f.vmm->seen.back().vm_list().with_stats());

  v1::VmCommand stop;
  stop.set_op(v1::VmCommand::STOP);
  stop.set_name("nope");
  stop.set_timeout_s(7);
  r = f.run(VmCommand{stop});
  CHECK(r.kind() == Reply::FAILED);
  CHECK(r.message() == "not found: no VM named 'nope'");
  CHECK(f.vmm->seen.back().vm_action().action() == v1::VmActionRequest::STOP);
  CHECK(f.vmm->seen.back().vm_action().timeout_s() == 7);
}

TEST_CASE("netd's public key is learnt when netd is healthy") {
  Fixture f;
  v1::DaemonHealth h;
  h.set_name("netd");
  h.set_state(v1::DaemonHealth::HEALTHY);
  f.workloads->daemonChanged(h);
  REQUIRE(test::runUntil(f.io, [&] { return !f.workloads->wireguardPublicKey().empty(); }));
  CHECK(f.workloads->wireguardPublicKey() == "cHVia2V5");
  CHECK(f.changed == 1);
}

TEST_CASE("the manifest file is checked on load; a damaged one is moved aside") {
  auto m = sampleManifest(9);
  auto data = encodeManifestFile(m);
  auto back = decodeManifestFile(data);
  REQUIRE(back);
  CHECK(back->version() == 9);
  for (std::size_t i = 0; i < data.size(); i += 7) {
    auto bad = data;
    bad[i] = static_cast<char>(bad[i] ^ 0x20);
    CHECK_FALSE(decodeManifestFile(bad));
  }
  CHECK_FALSE(decodeManifestFile(data.substr(0, data.size() - 1)));

  test::TempDir dir;
  auto bad = data;
  bad.back() = static_cast<char>(bad.back() ^ 1);
  REQUIRE(writeFileAtomic(dir.path() / "manifest.pb", bad));
  boost::asio::io_context io;
  DaemonMonitor mon(io, {}, std::chrono::seconds(60), {}, {});
  Workloads w(io, mon, WorkloadOptions{.stateDir = dir.path()}, {});
  REQUIRE(w.load());
  CHECK(w.manifestVersion() == 0);
  CHECK(std::filesystem::exists(dir.path() / "manifest.pb.damaged"));
  CHECK_FALSE(std::filesystem::exists(dir.path() / "manifest.pb"));
}

TEST_CASE("checkCommand refuses bad names, missing operations and bad manifests") {
  v1::CommandBody b;
  b.mutable_vm()->set_op(v1::VmCommand::START);
  b.mutable_vm()->set_name("../etc");
  CHECK(checkCommand(b).error().message.find("vm name '../etc' is invalid") != std::string::npos);
  b.mutable_vm()->set_name("");
  CHECK_FALSE(checkCommand(b));
  b.mutable_vm()->set_name("web");
  CHECK(checkCommand(b));
  b.mutable_vm()->set_op(v1::VmCommand::LIST);
  CHECK_FALSE(checkCommand(b));  // list takes no name
  b.mutable_vm()->set_name("");
  CHECK(checkCommand(b));
  b.mutable_vm()->set_op(v1::VmCommand::OP_UNSPECIFIED);
  CHECK_FALSE(checkCommand(b));

  b.mutable_ct()->set_op(v1::ContainerCommand::LOGS);
  b.mutable_ct()->set_name("a/b");
  CHECK_FALSE(checkCommand(b));

  auto m = sampleManifest(1);
  *b.mutable_apply()->mutable_manifest() = m;
  auto okManifest = checkCommand(b);
  CHECK_MESSAGE(okManifest, (okManifest ? "" : okManifest.error().message));
  b.mutable_apply()->mutable_manifest()->mutable_vms(0)->set_vcpus(0);
  CHECK(checkCommand(b).error().message.find("manifest: vm 'web': vcpus") == 0);
  b.mutable_apply()->clear_manifest();
  CHECK_FALSE(checkCommand(b));
}
