// guest_start_ct: time from a ct_action START on outrider-vmm's socket to its "ct.state running" event,
// next to a bare `crun run` of an identical bundle (a `true` container, fork/exec to its exit) measured
// in the same run. The difference is what vmm adds: its supervisor, create+start instead of run, the
// status record and the event.
//
// Usage: bench_guest_start_ct [TRIALS]   (default 20)
#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/ipc.hpp"
#include "outrider/vmm/crun_runtime.hpp"
#include "outrider/vmm/ct_spec.hpp"
#include "support/container_fixture.hpp"
#include "support/process.hpp"
#include "unit/test_ipc_support.hpp"

using namespace outrider;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

v1::ContainerSpec benchSpec() {
  v1::ContainerSpec s;
  s.set_name("bench");
  s.set_image("busybox");
  s.set_read_only_root(true);
  s.set_stopped(true);
  // pid 1 has no default signal actions: trap TERM so STOP ends it at once.
  for (const char* a : {"sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"}) s.add_args(a);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int trials = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  test::TempDir dir("bench-ct");
  std::unique_ptr<test::ContainerFixture> fx;
  fs::path tarball;
  try {
    fx = std::make_unique<test::ContainerFixture>(dir.path());
    tarball = test::ContainerFixture::rootfsTarball();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
  fs::path sock = dir / "vmm.sock", cfg = dir / "vmm.toml";
  std::ofstream(cfg) << "[api]\nsocket = \"" << sock.string() << "\"\n[log]\nlevel = \"notice\"\n" << fx->vmmConfig();
  test::Process vmm({test::binary("outrider-vmm").string(), "--config", cfg.string()}, dir / "vmm.log");
  if (!test::waitFor([&] { return fs::exists(sock) || !vmm.running(); }, 10s) || !vmm.running()) {
    std::fprintf(stderr, "bench: outrider-vmm did not start\n%s\n", vmm.log().c_str());
    return 1;
  }
  boost::asio::io_context io;
  ipc::Client client(io, sock);
  std::vector<std::pair<Clock::time_point, std::string>> events;
  client.subscribe([&](const v1::LocalEvent& ev) {
    if (ev.kind() == "ct.state" && ev.subject() == "bench") events.emplace_back(Clock::now(), ev.detail());
  });
  auto call = [&](v1::LocalRequest req, std::chrono::milliseconds t = 10s) -> std::optional<v1::LocalReply> {
    auto r = test::callAndWait(io, client, std::move(req), t);
    if (!r || r->has_error()) {
      std::fprintf(stderr, "bench: request failed: %s\n",
                   !r ? r.error().message.c_str() : r->error().message().c_str());
      return std::nullopt;
    }
    return *r;
  };
  if (!call(test::healthRequest())) return 1;
  v1::LocalRequest imp;
  imp.mutable_image_import()->set_name("busybox");
  imp.mutable_image_import()->set_source(tarball.string());
  if (!call(imp, 60s)) return 1;
  v1::LocalRequest apply;
  *apply.mutable_ct_apply()->add_containers() = benchSpec();
  apply.mutable_ct_apply()->set_manifest_version(1);
  if (!call(apply, 30s)) return 1;

  auto waitDetail = [&](std::size_t from, const std::string& prefix,
                        const std::string& alt = "") -> std::optional<Clock::time_point> {
    std::optional<Clock::time_point> at;
    test::runUntil(
        io,
        [&] {
          for (std::size_t i = from; i < events.size(); ++i)
            if (events[i].second.rfind(prefix, 0) == 0 || (!alt.empty() && events[i].second.rfind(alt, 0) == 0))
              return at = events[i].first, true;
          return false;
        },
        20s);
    return at;
  };

  std::vector<double> startMs;
  for (int i = 0; i < trials; ++i) {
    std::size_t mark = events.size();
    v1::LocalRequest start;
    start.mutable_ct_action()->set_name("bench");
    start.mutable_ct_action()->set_action(v1::CtActionRequest::START);
    auto t0 = Clock::now();
    if (!call(start)) return 1;
    auto running = waitDetail(mark, "running");
    if (!running) {
      std::fprintf(stderr, "bench: no running event in trial %d\n%s\n", i, vmm.log().c_str());
      return 1;
    }
    startMs.push_back(ms(*running - t0));
    std::size_t mark2 = events.size();
    v1::LocalRequest stop;
    stop.mutable_ct_action()->set_name("bench");
    stop.mutable_ct_action()->set_action(v1::CtActionRequest::STOP);
    // A TERM that lands before the shell set its trap is ignored (pid 1): then SIGKILL after 1 s.
    stop.mutable_ct_action()->set_timeout_s(1);
    if (!call(stop) || !waitDetail(mark2, "exited", "killed")) {
      std::fprintf(stderr, "bench: stop failed in trial %d\n", i);
      return 1;
    }
  }

  // Baseline: the same kind of bundle (same image root, read-only, same namespaces and cgroup parent)
  // run by crun directly.
  fs::path bundle = dir / "baseline";
  fs::create_directories(bundle);
  v1::ContainerSpec base = benchSpec();
  base.set_name("bench-base");
  base.clear_args();
  base.add_args("true");
  vmm::BundleOptions o;
  o.rootfsPath = (fx->imagesDir() / "busybox" / "rootfs").string();
  o.cgroupsPath = "/" + fx->cgroupParent() + "/bench-base";
  if (!writeFileAtomic(bundle / "config.json", vmm::renderConfigJson(base, o))) return 1;
  std::vector<double> baseMs;
  fs::path root = dir / "crun-baseline";
  for (int i = 0; i < trials; ++i) {
    auto t0 = Clock::now();
    auto r = vmm::runCommand({"crun", "--root", root.string(), "run", "--bundle", bundle.string(), "bench-base"});
    auto t1 = Clock::now();
    if (!r || r->exitCode != 0) {
      std::fprintf(stderr, "bench: bare crun run failed: %s\n", r ? r->err.c_str() : r.error().message.c_str());
      return 1;
    }
    baseMs.push_back(ms(t1 - t0));
  }

  // For the breakdown: crun create + start of the same bundle (what the supervisor runs), to the point
  // where start returns.
  std::vector<double> csMs;
  for (int i = 0; i < trials; ++i) {
    auto t0 = Clock::now();
    // Output to a file: the created container holds crun's stdout until it ends.
    int c = test::run({"crun", "--root", root.string(), "create", "--bundle", bundle.string(), "bench-cs"},
                      dir / "create.log");
    int s2 = test::run({"crun", "--root", root.string(), "start", "bench-cs"}, dir / "create.log");
    auto t1 = Clock::now();
    test::run({"crun", "--root", root.string(), "delete", "-f", "bench-cs"}, dir / "create.log");
    if (c != 0 || s2 != 0) {
      std::fprintf(stderr, "bench: bare crun create+start failed (see %s)\n", (dir / "create.log").c_str());
      return 1;
    }
    csMs.push_back(ms(t1 - t0));
  }

  // Remove the bench container (and with it the cgroup parent) before the fixture cleans up.
  v1::LocalRequest empty;
  empty.mutable_ct_apply()->set_manifest_version(2);
  call(empty, 30s);
  test::waitFor([&] { return fx->crunList().empty(); }, 10s);

  double value = median(startMs), baseline = median(baseMs);
  std::printf("guest_start_ct: %d trials\n", trials);
  std::printf("  START request -> ct.state running event   p50 %.1f ms  min %.1f  max %.1f\n", value,
              *std::min_element(startMs.begin(), startMs.end()), *std::max_element(startMs.begin(), startMs.end()));
  std::printf("  bare crun run of a `true` container      p50 %.1f ms  min %.1f  max %.1f\n", baseline,
              *std::min_element(baseMs.begin(), baseMs.end()), *std::max_element(baseMs.begin(), baseMs.end()));
  std::printf("  bare crun create + start (for reference) p50 %.1f ms\n", median(csMs));
  double overhead = value - baseline;
  bool pass = overhead <= 20.0;
  std::printf("RESULT guest_start_ct.start_to_running value=%.1f unit=ms baseline=%.1f ratio=%.3f goal=overhead<=20ms %s\n",
              value, baseline, value / baseline, pass ? "PASS" : "FAIL");
  std::printf("RESULT guest_start_ct.overhead value=%.1f unit=ms baseline=- ratio=- goal=<=20ms %s\n", overhead,
              pass ? "PASS" : "FAIL");
  return 0;
}
