// The real outrider-vmm running real containers through crun: image import, exit codes and logs, an
// OOM kill under a memory limit, restart backoff, adoption across a vmm SIGKILL, stop/delete cleanup,
// and bad requests that change nothing.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <csignal>
#include <fstream>
#include <optional>
#include <regex>

#include "outrider/common/ipc.hpp"
#include "support/container_fixture.hpp"
#include "support/process.hpp"
#include "unit/test_ipc_support.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using v1::LocalError;

namespace {

/// outrider-vmm with a config in a temp dir, and a subscribed client collecting events.
class Vmm {
 public:
  Vmm(const fs::path& dir, const std::string& extra) : dir_(dir) {
    socket_ = dir / "vmm.sock";
    config_ = dir / "vmm.toml";
    std::ofstream(config_) << "[api]\nsocket = \"" << socket_.string() << "\"\n[log]\nlevel = \"debug\"\n" << extra;
    start();
  }

  void start() {
    proc_.emplace(std::vector<std::string>{binary("outrider-vmm").string(), "--config", config_.string()},
                  dir_ / "vmm.log");
    REQUIRE_MESSAGE(waitFor([&] { return fs::exists(socket_) || !proc_->running(); }, 10s), "no socket");
    REQUIRE_MESSAGE(proc_->running(), proc_->log());
    client_ = std::make_unique<ipc::Client>(io_, socket_);
    client_->subscribe([this](const v1::LocalEvent& ev) {
      if (ev.kind() == "ct.state") events_.push_back(ev.subject() + " " + ev.detail());
    });
    // A health call makes sure the subscription is in place before the test acts.
    REQUIRE(call(healthRequest()).has_health());
  }

  void kill9() {
    client_.reset();
    proc_->signal(SIGKILL);
    proc_->wait(10s);
    proc_.reset();
    std::error_code ec;
    fs::remove(socket_, ec);
  }

  v1::LocalReply call(v1::LocalRequest req, std::chrono::milliseconds timeout = 5s) {
    auto r = callAndWait(io_, *client_, std::move(req), timeout);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    return *r;
  }

  /// Wait until an event "SUBJECT DETAIL..." matching `re` arrived (searching from event `from`).
  bool waitEvent(const std::string& re, std::chrono::milliseconds timeout, std::size_t from = 0) {
    std::regex rx(re);
    return runUntil(
        io_,
        [&] {
          for (std::size_t i = from; i < events_.size(); ++i)
            if (std::regex_search(events_[i], rx)) return true;
          return false;
        },
        timeout);
  }

  std::optional<v1::ContainerInfo> find(const std::string& name) {
    v1::LocalRequest req;
    req.mutable_ct_list();
    auto r = call(req);
    for (auto& c : r.ct_list().containers())
      if (c.name() == name) return c;
    return std::nullopt;
  }

  std::vector<std::string>& events() { return events_; }
  std::string log() const { return proc_ ? proc_->log() : ""; }

 private:
  fs::path dir_, socket_, config_;
  boost::asio::io_context io_;
  std::optional<Process> proc_;
  std::unique_ptr<ipc::Client> client_;
  std::vector<std::string> events_;
};

v1::ContainerSpec spec(const std::string& name, std::vector<std::string> args) {
  v1::ContainerSpec s;
  s.set_name(name);
  s.set_image("busybox");
  for (auto& a : args) s.add_args(a);
  return s;
}

v1::LocalRequest applyReq(std::vector<v1::ContainerSpec> specs, std::uint64_t version) {
  v1::LocalRequest req;
  for (auto& s : specs) *req.mutable_ct_apply()->add_containers() = s;
  req.mutable_ct_apply()->set_manifest_version(version);
  return req;
}

v1::LocalRequest actionReq(const std::string& name, v1::CtActionRequest::Action a) {
  v1::LocalRequest req;
  req.mutable_ct_action()->set_name(name);
  req.mutable_ct_action()->set_action(a);
  return req;
}

}  // namespace

TEST_CASE("containers through crun: import, exit code and logs, OOM, restart backoff, adoption, cleanup") {
  TempDir dir("ct");
  std::unique_ptr<ContainerFixture> fx;
  try {
    fx = std::make_unique<ContainerFixture>(dir.path());
  } catch (const std::exception& e) {
    FAIL(e.what());
  }
  fs::path tarball = ContainerFixture::rootfsTarball();
  Vmm vmm(dir.path(), fx->vmmConfig());
  INFO("vmm log:\n" << vmm.log());

  // ---- bad requests change nothing
  {
    v1::LocalRequest imp;
    imp.mutable_image_import()->set_name("busybox");
    imp.mutable_image_import()->set_source("relative/rootfs.tar");
    CHECK(vmm.call(imp).error().code() == LocalError::BAD_REQUEST);
    imp.mutable_image_import()->set_name("../evil");
    imp.mutable_image_import()->set_source(tarball.string());
    CHECK(vmm.call(imp).error().code() == LocalError::BAD_REQUEST);
    auto dup = vmm.call(applyReq({spec("a", {"true"}), spec("a", {"true"})}, 1));
    CHECK(dup.error().code() == LocalError::BAD_REQUEST);
    CHECK(dup.error().message().find("twice") != std::string::npos);
    CHECK(vmm.call(actionReq("nope", v1::CtActionRequest::STOP)).error().code() == LocalError::NOT_FOUND);
    CHECK(vmm.call(actionReq("bad/name", v1::CtActionRequest::START)).error().code() == LocalError::BAD_REQUEST);
    v1::LocalRequest list;
    list.mutable_ct_list();
    CHECK(vmm.call(list).ct_list().containers_size() == 0);
    CHECK_FALSE(fs::exists(fx->stateDir() / "desired"));
  }

  // ---- import
  v1::LocalRequest imp;
  imp.mutable_image_import()->set_name("busybox");
  imp.mutable_image_import()->set_source(tarball.string());
  auto ir = vmm.call(imp, 60s);
  REQUIRE_MESSAGE(ir.has_image(), ir.error().message());
  CHECK(ir.image().digest().rfind("sha256:", 0) == 0);
  CHECK(ir.image().digest().size() == 7 + 64);
  CHECK(fs::exists(fx->imagesDir() / "busybox" / "rootfs" / "bin" / "busybox"));

  // A spec that fails validation gets a per-item error; the valid ones go ahead.
  auto badEnv = spec("badenv", {"true"});
  badEnv.add_env("NOEQUALS");
  auto exit3 = spec("exit3", {"sh", "-c", "echo CT-MARKER-42; echo to-stderr >&2; exit 3"});
  auto oom = spec("oom", {"sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived"});
  oom.set_memory_bytes(8u << 20);
  auto crash = spec("crash", {"sh", "-c", "exit 1"});
  crash.set_restart(v1::ContainerSpec::ON_FAILURE);
  auto longrun = spec("long", {"sleep", "1000"});
  longrun.set_read_only_root(true);
  longrun.set_stop_timeout_s(2);
  longrun.set_pids_max(16);
  longrun.set_memory_bytes(64u << 20);

  // An image named by the spec but not imported yet comes from its image_source.
  auto autoImport = spec("auto", {"sh", "-c", "exit 0"});
  autoImport.set_image("auto-img");
  autoImport.set_image_source(tarball.string());

  auto ar = vmm.call(applyReq({badEnv, exit3, oom, crash, longrun, autoImport}, 7), 30s);
  REQUIRE(ar.has_apply());
  CHECK(ar.apply().manifest_version() == 7);
  REQUIRE(ar.apply().results_size() == 6);
  CHECK_FALSE(ar.apply().results(0).ok());
  CHECK(ar.apply().results(0).error().find("NOEQUALS") != std::string::npos);
  for (int i = 1; i < 6; ++i) CHECK_MESSAGE(ar.apply().results(i).ok(), ar.apply().results(i).error());
  CHECK(ar.apply().results(5).action().find("importing image") != std::string::npos);
  CHECK_FALSE(vmm.find("badenv"));

  REQUIRE_MESSAGE(vmm.waitEvent("^exit3 exited code=3$", 20s), vmm.log());
  {
    auto i = vmm.find("exit3");
    REQUIRE(i);
    CHECK(i->exited());
    CHECK(i->exit_code() == 3);
    CHECK(i->signal() == 0);
    CHECK(i->state() == "stopped");
    CHECK(i->restarts() == 0);
    v1::LocalRequest lr;
    lr.mutable_ct_logs()->set_name("exit3");
    auto logs = vmm.call(lr);
    CHECK(logs.logs().stdout_data().find("CT-MARKER-42") != std::string::npos);
    CHECK(logs.logs().stderr_data().find("to-stderr") != std::string::npos);
  }

  REQUIRE_MESSAGE(vmm.waitEvent("^auto exited code=0$", 30s), vmm.log());
  CHECK(fs::exists(fx->imagesDir() / "auto-img" / "rootfs" / "bin" / "busybox"));

  // ---- OOM under an 8 MiB limit
  REQUIRE_MESSAGE(vmm.waitEvent("^oom (killed signal=9|exited code=\\d+) \\(oom\\)$", 30s), vmm.log());
  {
    auto i = vmm.find("oom");
    REQUIRE(i);
    CHECK(i->oom_killed());
    v1::LocalRequest lr;
    lr.mutable_ct_logs()->set_name("oom");
    CHECK(vmm.call(lr).logs().stdout_data().find("survived") == std::string::npos);
  }

  // ---- restart with growing delays
  REQUIRE_MESSAGE(vmm.waitEvent("^crash restarting in 4s$", 30s), vmm.log());
  {
    std::vector<long> delays;
    std::regex rx("^crash restarting in (\\d+)s$");
    for (auto& e : vmm.events()) {
      std::smatch m;
      if (std::regex_search(e, m, rx)) delays.push_back(std::stol(m[1]));
    }
    REQUIRE(delays.size() >= 3);
    CHECK(delays[0] == 1);
    for (std::size_t k = 1; k < delays.size(); ++k) CHECK(delays[k] > delays[k - 1]);
    auto i = vmm.find("crash");
    REQUIRE(i);
    CHECK(i->restarts() >= 2);
    CHECK(i->restart() == "on-failure");
  }

  // ---- adoption: vmm SIGKILLed and restarted while "long" runs
  REQUIRE(vmm.waitEvent("^long running$", 20s));
  auto before = vmm.find("long");
  REQUIRE(before);
  REQUIRE(before->state() == "running");
  int pid = before->pid();
  CHECK(pid > 0);
  {
    v1::LocalRequest lr;
    lr.mutable_ct_list()->set_with_stats(true);
    auto l = vmm.call(lr);
    for (auto& c : l.ct_list().containers())
      if (c.name() == "long") {
        CHECK(c.stats().memory_limit_bytes() == (64u << 20));
        CHECK(c.stats().pids() >= 1);
      }
  }
  vmm.kill9();
  CHECK(::kill(pid, 0) == 0);  // the container outlives vmm
  vmm.start();
  auto after = vmm.find("long");
  REQUIRE(after);
  CHECK(after->state() == "running");
  CHECK(after->pid() == pid);
  auto ids = fx->crunList();
  CHECK(std::count(ids.begin(), ids.end(), "long") == 1);
  CHECK(std::count(ids.begin(), ids.end(), "exit3") <= 1);

  // ---- stop, stop again, delete
  std::size_t mark = vmm.events().size();
  auto st = vmm.call(actionReq("long", v1::CtActionRequest::STOP));
  CHECK_MESSAGE(!st.has_error(), st.error().message());
  REQUIRE(vmm.waitEvent("^long (killed signal=(15|9)|exited code=\\d+)", 20s, mark));
  CHECK(vmm.call(actionReq("long", v1::CtActionRequest::STOP)).error().code() == LocalError::CONFLICT);
  // The operator's stop holds across a reconcile.
  auto again = vmm.find("long");
  REQUIRE(again);
  CHECK_FALSE(again->desired_running());
  auto del = vmm.call(actionReq("long", v1::CtActionRequest::DELETE));
  CHECK_MESSAGE(!del.has_error(), del.error().message());
  CHECK(vmm.waitEvent("^long removed$", 10s, mark));
  ids = fx->crunList();
  CHECK(std::count(ids.begin(), ids.end(), "long") == 0);
  CHECK(fx->cgroupDirs("long").empty());
  CHECK_FALSE(fs::exists(fx->stateDir() / "long"));
  CHECK_FALSE(vmm.find("long"));
  CHECK(vmm.call(actionReq("long", v1::CtActionRequest::START)).error().code() == LocalError::NOT_FOUND);

  // ---- an empty desired set removes everything, and the cgroup parent goes too
  auto empty = vmm.call(applyReq({}, 8), 30s);
  REQUIRE(empty.has_apply());
  REQUIRE(waitFor([&] { return fx->crunList().empty(); }, 20s));
  REQUIRE(vmm.waitEvent("^crash removed$", 20s, mark));
  REQUIRE(vmm.waitEvent("^auto removed$", 20s, mark));
  bool gone = waitFor([&] { return fx->cgroupDirs().empty(); }, 10s);
  std::string left;
  for (auto& d : fx->cgroupDirs()) {
    left += d.string() + ":";
    std::error_code ec;
    for (auto& e : fs::directory_iterator(d, ec))
      if (e.is_directory()) left += " " + e.path().filename().string();
    left += "\n";
  }
  CHECK_MESSAGE(gone, left);
  v1::LocalRequest list;
  list.mutable_ct_list();
  CHECK(vmm.call(list).ct_list().containers_size() == 0);
}
