// The real outrider-vmm driving real libvirtd + QEMU (TCG): a tiny guest is applied, boots, prints its
// marker on the console, survives a SIGKILL of vmm (adopted, not restarted), refuses bad requests
// without changing anything, stops with an event, and is deleted with its files.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <csignal>

#include "outrider/common/ipc.hpp"
#include "support/libvirt_fixture.hpp"
#include "support/process.hpp"
#include "unit/test_ipc_support.hpp"

using namespace outrider;
using namespace outrider::test;
using v1::LocalError;
using v1::LocalReply;
using v1::LocalRequest;

namespace {

struct Vmm {
  boost::asio::io_context io;
  TempDir dir{"vmmvm"};
  std::filesystem::path config = LibvirtFixture::writeVmmConfig(dir.path());
  std::optional<Process> proc;
  std::unique_ptr<ipc::Client> client;
  std::vector<std::string> events;

  void start() {
    proc.emplace(std::vector<std::string>{binary("outrider-vmm").string(), "--config", config.string()}, dir / "vmm.log");
    REQUIRE(waitFor([&] { return std::filesystem::exists(dir / "vmm.sock") || !proc->running(); }, std::chrono::seconds(20)));
    client = std::make_unique<ipc::Client>(io, dir / "vmm.sock");
    // After a SIGKILL the old socket file is still there until the new vmm replaces it: wait for an answer.
    REQUIRE(waitFor([&] { return callAndWait(io, *client).ok(); }, std::chrono::seconds(20)));
    client->subscribe([this](const v1::LocalEvent& ev) { events.push_back(ev.kind() + " " + ev.subject() + " " + ev.detail()); });
  }
  Result<LocalReply> call(LocalRequest req, std::chrono::seconds timeout = std::chrono::seconds(90)) {
    return callAndWait(io, *client, std::move(req), timeout);
  }
  bool sawEvent(const std::string& e, std::chrono::seconds timeout) {
    return runUntil(io, [&] { return std::find(events.begin(), events.end(), e) != events.end(); }, timeout);
  }
  bool sawEventStarting(const std::string& prefix, std::chrono::seconds timeout) {
    return runUntil(
        io, [&] { return std::any_of(events.begin(), events.end(), [&](const auto& e) { return e.starts_with(prefix); }); },
        timeout);
  }
};

v1::VmSpec guest(const LibvirtFixture& f, const std::string& name) {
  v1::VmSpec s;
  s.set_name(name);
  s.set_vcpus(1);
  s.set_memory_mib(128);
  s.mutable_kernel()->set_kernel(f.kernel().string());
  s.mutable_kernel()->set_initrd(f.initrd().string());
  s.mutable_kernel()->set_cmdline("console=ttyS0 panic=-1 quiet");
  s.add_disks()->set_base_image(f.baseImage().string());
  return s;
}

LocalRequest applyReq(std::vector<v1::VmSpec> specs, std::uint64_t version) {
  LocalRequest r;
  for (auto& s : specs) *r.mutable_vm_apply()->add_vms() = s;
  r.mutable_vm_apply()->set_manifest_version(version);
  return r;
}

LocalRequest actionReq(const std::string& name, v1::VmActionRequest::Action a, unsigned timeout = 0) {
  LocalRequest r;
  r.mutable_vm_action()->set_name(name);
  r.mutable_vm_action()->set_action(a);
  r.mutable_vm_action()->set_timeout_s(timeout);
  return r;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

TEST_CASE("outrider-vmm boots, adopts, refuses, stops and deletes a real guest under libvirt") {
  LibvirtFixture f;
  REQUIRE_MESSAGE(f.problem().empty(), f.problem());
  const std::string name = f.uniqueName("vm");
  f.track(name);
  Vmm vmm;
  vmm.start();
  INFO("vmm log: " << vmm.proc->log());

  // Apply: defined and started, running event, marker on the console, the domain exists in libvirt.
  auto r = vmm.call(applyReq({guest(f, name)}, 1));
  REQUIRE_MESSAGE(r.ok(), (r ? "" : r.error().message));
  REQUIRE_MESSAGE(r->has_apply(), r->error().message());
  REQUIRE(r->apply().results_size() == 1);
  CHECK_MESSAGE(r->apply().results(0).ok(), r->apply().results(0).error());
  CHECK(r->apply().results(0).action() == "defined, started");
  CHECK(vmm.sawEvent("vm.state " + name + " running (booted)", std::chrono::seconds(30)));
  LocalRequest con;
  con.mutable_vm_console()->set_name(name);
  bool marker = waitFor(
      [&] {
        auto c = vmm.call(con);
        return c && c->has_console() && c->console().data().find(LibvirtFixture::kMarker) != std::string::npos;
      },
      std::chrono::seconds(60));
  CHECK(marker);
  std::string state, uuid, id;
  CHECK(f.virsh("domstate " + name, &state) == 0);
  CHECK(trim(state) == "running");
  f.virsh("domuuid " + name, &uuid);
  f.virsh("domid " + name, &id);
  auto overlays = vmm.dir / "state" / "disks" / name;
  CHECK(std::filesystem::exists(overlays));

  // Bad requests: the right error, and the guest is untouched.
  auto unknown = vmm.call(actionReq(name + "-nope", v1::VmActionRequest::STOP));
  REQUIRE(unknown.ok());
  CHECK(unknown->error().code() == LocalError::NOT_FOUND);
  auto badName = vmm.call(actionReq("../etc", v1::VmActionRequest::START));
  REQUIRE(badName.ok());
  CHECK(badName->error().code() == LocalError::BAD_REQUEST);
  auto again = vmm.call(actionReq(name, v1::VmActionRequest::START));
  REQUIRE(again.ok());
  CHECK(again->error().code() == LocalError::CONFLICT);
  auto noKernel = guest(f, name + "-k");
  noKernel.mutable_kernel()->set_kernel("/nonexistent/vmlinux");
  auto huge = guest(f, name + "-m");
  huge.set_memory_mib(1ull << 26);
  auto arm = guest(f, name + "-a");
  arm.set_arch("aarch64");
  auto bad = vmm.call(applyReq({guest(f, name), noKernel, huge, arm}, 2));
  REQUIRE(bad.ok());
  REQUIRE(bad->has_apply());
  REQUIRE(bad->apply().results_size() == 4);
  CHECK(bad->apply().results(0).ok());
  CHECK(bad->apply().results(0).action() == "unchanged");
  CHECK(bad->apply().results(1).error().find("does not exist") != std::string::npos);
  CHECK(bad->apply().results(2).error().find("MiB") != std::string::npos);
  CHECK(bad->apply().results(3).error().find("aarch64") != std::string::npos);
  CHECK(f.virsh("dominfo " + name + "-k") != 0);
  auto dup = vmm.call(applyReq({guest(f, name), guest(f, name)}, 3));
  REQUIRE(dup.ok());
  CHECK(dup->error().code() == LocalError::CONFLICT);

  // SIGKILL vmm and start it again: the guest is adopted (same id and uuid), not restarted or duplicated.
  vmm.proc->signal(SIGKILL);
  vmm.proc->wait(std::chrono::seconds(10));
  vmm.client.reset();
  vmm.events.clear();
  vmm.start();
  LocalRequest list;
  list.mutable_vm_list()->set_with_stats(true);
  auto l = vmm.call(list);
  REQUIRE(l.ok());
  REQUIRE(l->has_vm_list());
  REQUIRE(l->vm_list().vms_size() == 1);
  CHECK(l->vm_list().vms(0).state() == "running");
  CHECK(l->vm_list().vms(0).accel() == "tcg");
  CHECK(l->vm_list().vms(0).uuid() == trim(uuid));
  CHECK(l->vm_list().vms(0).stats().cpu_time_ns() > 0);
  std::string id2, names;
  f.virsh("domid " + name, &id2);
  CHECK(trim(id2) == trim(id));
  f.virsh("list --all --name", &names);
  CHECK(std::count(names.begin(), names.end(), '\n') >= 1);
  CHECK(names.find(name + "\n" + name) == std::string::npos);

  // libvirtd restarts (an upgrade, a crash): vmm sees its connection close, reconnects and registers for
  // lifecycle events again (the stop below must still produce its event); the guest runs on, not
  // duplicated. Only a libvirtd this fixture started is restarted.
  vmm.events.clear();
  if (f.restartLibvirtd()) {
    CHECK_MESSAGE(vmm.sawEventStarting("vm.libvirt qemu:///system disconnected", std::chrono::seconds(30)), vmm.proc->log());
    CHECK_MESSAGE(vmm.sawEvent("vm.libvirt qemu:///system connected", std::chrono::seconds(90)), vmm.proc->log());
    auto again = vmm.call(list);
    REQUIRE(again.ok());
    REQUIRE(again->vm_list().vms_size() == 1);
    CHECK(again->vm_list().vms(0).state() == "running");
    CHECK(again->vm_list().vms(0).uuid() == trim(uuid));
    std::string id3;
    f.virsh("domid " + name, &id3);
    CHECK(trim(id3) == trim(id));  // the same QEMU process, not a new boot
  } else {
    MESSAGE("libvirtd was running before this test: not restarting a daemon it did not start");
  }

  // Stop (ACPI, destroy after the timeout), event, second stop is a conflict.
  auto stop = vmm.call(actionReq(name, v1::VmActionRequest::STOP, 15));
  REQUIRE(stop.ok());
  REQUIRE_MESSAGE(stop->has_vm(), stop->error().message());
  CHECK(stop->vm().state() == "shutoff");
  CHECK_FALSE(stop->vm().desired_running());
  bool offEvent = vmm.sawEvent("vm.state " + name + " shutoff (shutdown)", std::chrono::seconds(5)) ||
                  vmm.sawEvent("vm.state " + name + " shutoff (destroyed)", std::chrono::seconds(1));
  CHECK(offEvent);
  auto stop2 = vmm.call(actionReq(name, v1::VmActionRequest::STOP));
  REQUIRE(stop2.ok());
  CHECK(stop2->error().code() == LocalError::CONFLICT);

  // Delete: the domain, its overlays and its console log are gone.
  auto del = vmm.call(actionReq(name, v1::VmActionRequest::DELETE));
  REQUIRE(del.ok());
  CHECK_MESSAGE(del->has_vm(), del->error().message());
  CHECK(f.virsh("dominfo " + name) != 0);
  CHECK_FALSE(std::filesystem::exists(overlays));
  CHECK_FALSE(std::filesystem::exists(vmm.dir / "log" / (name + ".console.log")));
}
