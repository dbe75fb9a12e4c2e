// A VM end to end through the hub: outriderctl (as the hub, over a real Mosquitto with mutual TLS and an
// ACL) applies a manifest to the real outrider-agent, which hands it to the real outrider-vmm, which boots
// the tiny guest under the real libvirtd + QEMU (TCG). The guest is then listed, read on its console,
// stopped, started, kept across an agent restart and a vmm SIGKILL, refused bad requests without being
// touched, and removed by a later manifest with its files.
#include <doctest/doctest.h>

#include <csignal>
#include <fstream>
#include <sstream>

#include "outrider/common/topics.hpp"
#include "outrider/v1/hub.pb.h"
#include "support/libvirt_fixture.hpp"
#include "support/mqtt_fixture.hpp"
#include "support/node_fixture.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

MosquittoLib g_mosquitto;

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto pos = haystack.find(needle); pos != std::string::npos; pos = haystack.find(needle, pos + 1)) ++n;
  return n;
}

/// The node, and a hub-side MQTT client that watches its status, events and command topics.
struct E2e {
  NodeFixture node;
  MqttClient hub{g_mosquitto, MqttClientOptions{.caFile = node.ca.caFile(), .cert = node.hubCert()}};

  E2e() {
    REQUIRE(hub.connect("127.0.0.1", node.broker.port()));
    REQUIRE(hub.subscribe(topics::status("n1")));
    REQUIRE(hub.subscribe(topics::events("n1")));
    REQUIRE(hub.subscribe(topics::cmd("n1")));
    node.startAll();
  }

  std::vector<v1::NodeStatus> statuses() const {
    std::vector<v1::NodeStatus> out;
    for (const auto& m : hub.received())
      if (m.topic == topics::status("n1")) {
        v1::NodeStatus s;
        if (s.ParseFromString(m.payload)) out.push_back(s);
      }
    return out;
  }
  /// Online with agent, vmm and netd healthy, in a status received after the first `from` ones.
  bool waitHealthy(std::size_t from = 0, std::chrono::milliseconds t = 30s) const {
    return waitFor(
        [&] {
          auto all = statuses();
          for (auto i = from; i < all.size(); ++i) {
            int healthy = 0;
            for (const auto& d : all[i].daemons()) healthy += d.state() == v1::DaemonHealth::HEALTHY;
            if (all[i].online() && healthy == 3) return true;
          }
          return false;
        },
        t);
  }

  std::vector<v1::NodeEvent> events() const {
    std::vector<v1::NodeEvent> out;
    for (const auto& m : hub.received())
      if (m.topic == topics::events("n1")) {
        v1::NodeEvent e;
        if (e.ParseFromString(m.payload)) out.push_back(e);
      }
    return out;
  }
  /// A `vm.state` event for `vm` whose detail starts with `state`, after the first `from` events.
  bool waitVmEvent(const std::string& vm, const std::string& state, std::size_t from,
                   std::chrono::milliseconds t = 30s) const {
    return waitFor(
        [&] {
          auto all = events();
          for (auto i = from; i < all.size(); ++i)
            if (all[i].kind() == "vm.state" && all[i].subject() == vm && all[i].detail().rfind(state, 0) == 0 &&
                all[i].source() == "vmm")
              return true;
          return false;
        },
        t);
  }

  std::size_t commandsSent() const {
    std::size_t n = 0;
    for (const auto& m : hub.received()) n += m.topic == topics::cmd("n1");
    return n;
  }

  /// STATE and ACCEL of `vm` in `outriderctl vm list n1`, or empty strings when it is not listed.
  std::pair<std::string, std::string> listed(const std::string& vm) {
    auto [rc, out] = node.ctl({"vm", "list", "n1"});
    REQUIRE_MESSAGE(rc == 0, out);
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream words(line);
      std::string name, state, accel;
      words >> name >> state >> accel;
      if (name == vm) return {state, accel};
    }
    return {"", ""};
  }

  std::string diag() const { return node.diagnostics(); }
};

/// How often the agent handed vmm the desired state, or tried to and logged why it could not.
std::size_t pushes(NodeFixture& n) {
  auto log = n.agent.log();
  return count(log, "desired state handed to vmm") + count(log, "desired state to vmm");
}

struct Vm {
  std::string name;
  std::string kernel;
  bool stopped = false;
};

/// A manifest file in the node's directory; returns its path.
std::string writeManifest(const NodeFixture& node, const LibvirtFixture& f, std::uint64_t version,
                          const std::vector<Vm>& vms) {
  std::ostringstream m;
  m << "version = " << version << "\n";
  for (const auto& vm : vms) {
    m << "\n[[vm]]\nname = \"" << vm.name << "\"\nvcpus = 1\nmemory_mib = 128\n"
      << "stopped = " << (vm.stopped ? "true" : "false") << "\n"
      << "kernel = { path = \"" << (vm.kernel.empty() ? f.kernel().string() : vm.kernel) << "\", initrd = \""
      << f.initrd().string() << "\", cmdline = \"console=ttyS0 panic=-1 quiet\" }\n"
      << "network = { mode = \"none\" }\n"
      << "  [[vm.disk]]\n  base_image = \"" << f.baseImage().string() << "\"\n";
  }
  auto path = node / ("manifest-" + std::to_string(version) + ".toml");
  std::ofstream(path) << m.str();
  return path.string();
}

}  // namespace

TEST_CASE("a VM through the hub: apply, list, console, stop, start, restarts, bad requests, removal") {
  LibvirtFixture f;
  REQUIRE_MESSAGE(f.problem().empty(), f.problem());
  const std::string vm = f.uniqueName("e2e");
  const std::string noKernel = vm + "-k";
  f.track(vm);
  f.track(noKernel);

  E2e e;
  REQUIRE_MESSAGE(e.waitHealthy(), e.diag());
  auto& n = e.node;
  INFO("node logs:\n" << e.diag());

  // ---- apply: the VM is defined and started, the hub sees it running.
  auto events0 = e.events().size();
  {
    auto [rc, out] = n.ctl({"apply", "n1", writeManifest(n, f, 5, {{vm, ""}})});
    REQUIRE_MESSAGE(rc == 0, out);
    CHECK_MESSAGE(out.find("manifest version 5") != std::string::npos, out);
    std::string row;
    for (std::istringstream lines(out); std::getline(lines, row);)
      if (row.find(vm) != std::string::npos) break;
    CHECK_MESSAGE(row.find("ok") != std::string::npos, out);
    CHECK_MESSAGE(row.find("started") != std::string::npos, out);
  }
  CHECK_MESSAGE(e.waitVmEvent(vm, "running", events0), e.diag());
  {
    auto [state, accel] = e.listed(vm);
    CHECK(state == "running");
    CHECK(accel == "tcg");
  }
  std::string console;
  bool marker = waitFor(
      [&] {
        auto [rc, out] = n.ctl({"vm", "console", "n1", vm});
        console = out;
        return rc == 0 && out.find(LibvirtFixture::kMarker) != std::string::npos;
      },
      60s);
  CHECK_MESSAGE(marker, "last console output:\n" << console);
  std::string state, uuid, id;
  CHECK(f.virsh("domstate " + vm, &state) == 0);
  CHECK(trim(state) == "running");
  REQUIRE(f.virsh("domuuid " + vm, &uuid) == 0);
  REQUIRE(f.virsh("domid " + vm, &id) == 0);
  uuid = trim(uuid);
  id = trim(id);
  REQUIRE_FALSE(uuid.empty());
  const fs::path overlays = n.vmStateDir() / "disks" / vm;
  const fs::path consoleLog = n.vmLogDir() / (vm + ".console.log");
  CHECK(fs::exists(overlays));
  CHECK(fs::exists(consoleLog));

  // The guest is the same domain, not restarted: same uuid and the same running domain id.
  auto sameGuest = [&](const char* when) {
    CAPTURE(when);
    std::string s, u, i;
    CHECK(f.virsh("domstate " + vm, &s) == 0);
    CHECK(trim(s) == "running");
    f.virsh("domuuid " + vm, &u);
    f.virsh("domid " + vm, &i);
    CHECK(trim(u) == uuid);
    CHECK(trim(i) == id);
  };

  // ---- bad requests through the hub: clear errors, nothing changes.
  {
    auto [rc, out] = n.ctl({"vm", "stop", "n1", "nosuchvm"});
    CHECK(rc == 1);
    CHECK_MESSAGE(out.find("not found") != std::string::npos, out);
  }
  {
    auto sent = e.commandsSent();
    auto [rc, out] = n.ctl({"vm", "start", "n1", "../x"});
    CHECK(rc == 2);
    CHECK_MESSAGE(out.find("invalid VM name") != std::string::npos, out);
    // Refused by outriderctl itself: nothing reached the node's command topic.
    CHECK(e.commandsSent() == sent);
  }
  {
    auto [rc, out] = n.ctl({"apply", "n1", writeManifest(n, f, 3, {})});
    CHECK(rc == 1);
    CHECK_MESSAGE(out.find("older than version 5") != std::string::npos, out);
    CHECK_MESSAGE(out.find("nothing changed") != std::string::npos, out);
    sameGuest("after an older manifest");
    CHECK(fs::exists(overlays));
  }
  {
    auto [rc, out] = n.ctl({"apply", "n1", writeManifest(n, f, 6, {{vm, ""}, {noKernel, "/nonexistent/vmlinux"}})});
    CHECK(rc == 1);
    // The failing item is named, with why; the good one is untouched.
    CHECK_MESSAGE(out.find(noKernel + "'") != std::string::npos, out);
    CHECK_MESSAGE(out.find("/nonexistent/vmlinux") != std::string::npos, out);
    CHECK_MESSAGE(out.find("does not exist") != std::string::npos, out);
    std::string row;
    for (std::istringstream lines(out); std::getline(lines, row);)
      if (row.find(vm + " ") != std::string::npos) break;
    CHECK_MESSAGE(row.find("unchanged") != std::string::npos, out);
    CHECK(f.virsh("dominfo " + noKernel) != 0);
    sameGuest("after a manifest with a bad item");
  }

  // ---- the agent restarted: the guest is kept, and the agent hands it the desired state again.
  {
    auto handed = pushes(n);
    auto seen = e.statuses().size();
    n.agent.signal(SIGTERM);
    REQUIRE(n.agent.wait(15s));
    n.startAgent();
    REQUIRE_MESSAGE(e.waitHealthy(seen), e.diag());
    CHECK_MESSAGE(waitFor([&] { return pushes(n) > handed; }, 30s), e.diag());
    sameGuest("after an agent restart");
    CHECK(e.listed(vm).first == "running");
  }

  // ---- vmm killed with SIGKILL and started again: the guest is adopted, not started twice.
  {
    auto handed = pushes(n);
    n.vmm.signal(SIGKILL);
    REQUIRE(n.vmm.wait(15s));
    n.startVmm();
    CHECK_MESSAGE(waitFor([&] { return pushes(n) > handed; }, 60s), e.diag());
    sameGuest("after vmm was killed and restarted");
    std::string all;
    f.virsh("list --all --name", &all);
    CHECK(count(all, vm + "\n") == 1);
    CHECK(e.listed(vm).first == "running");
  }

  // ---- stop and start through the hub.
  {
    auto from = e.events().size();
    auto [rc, out] = n.ctl({"vm", "stop", "n1", vm});
    CHECK_MESSAGE(rc == 0, out);
    std::string s;
    f.virsh("domstate " + vm, &s);
    CHECK(trim(s) == "shut off");
    CHECK(e.listed(vm).first == "shutoff");
    CHECK_MESSAGE(e.waitVmEvent(vm, "shutoff", from), e.diag());
    // Stopping a stopped VM is refused with the reason.
    auto [rc2, out2] = n.ctl({"vm", "stop", "n1", vm});
    CHECK(rc2 == 1);
    CHECK_MESSAGE(out2.find("conflict") != std::string::npos, out2);
  }
  {
    auto from = e.events().size();
    auto [rc, out] = n.ctl({"vm", "start", "n1", vm});
    CHECK_MESSAGE(rc == 0, out);
    CHECK_MESSAGE(e.waitVmEvent(vm, "running", from), e.diag());
    std::string s, u;
    f.virsh("domstate " + vm, &s);
    CHECK(trim(s) == "running");
    f.virsh("domuuid " + vm, &u);
    CHECK(trim(u) == uuid);
    CHECK(e.listed(vm).first == "running");
  }

  // ---- a newer manifest without the VM: the domain and its files are gone.
  {
    auto from = e.events().size();
    auto [rc, out] = n.ctl({"apply", "n1", writeManifest(n, f, 7, {})});
    CHECK_MESSAGE(rc == 0, out);
    CHECK_MESSAGE(out.find("manifest version 7") != std::string::npos, out);
    CHECK_MESSAGE(waitFor([&] { return f.virsh("dominfo " + vm) != 0; }, 60s), e.diag());
    CHECK(waitFor([&] { return !fs::exists(overlays) && !fs::exists(consoleLog); }, 10s));
    CHECK(e.waitVmEvent(vm, "undefined", from));
    CHECK(e.listed(vm).first.empty());
  }
}
