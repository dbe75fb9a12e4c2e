// The container manager's reconcile against a fake runtime behind the same interface as the crun
// backend: create/start/unchanged/recreate/remove, imperative stop that reconcile keeps, adoption
// after a restart without duplicates, leftovers removed, bad requests changing nothing.
#include <doctest/doctest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <fstream>
#include <map>

#include "outrider/common/atomic_file.hpp"
#include "outrider/vmm/ct_manager.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::vmm;
namespace fs = std::filesystem;
using v1::LocalError;

namespace {

/// In-memory runtime: launch writes a "running" record the way the supervisor does; exits are
/// written by the test (or by kill).
class FakeRuntime final : public ContainerRuntime {
 public:
  Result<std::vector<RuntimeContainer>> list() override {
    std::vector<RuntimeContainer> out;
    for (auto& [id, st] : state) out.push_back({id, st, 1000});
    return out;
  }
  Status launch(const std::string& id, const fs::path& bundle, std::uint64_t) override {
    launches[id]++;
    bundles[id] = bundle;
    state[id] = "running";
    write(id, "running", 0, 0);
    return {};
  }
  Status kill(const std::string& id, const std::string& sig) override {
    kills.push_back(id + " " + sig);
    if (state[id] != "running") return Error{"not running"};
    exit(id, 0, sig == "KILL" ? 9 : 15);
    return {};
  }
  Status remove(const std::string& id) override {
    state.erase(id);
    return {};
  }
  std::optional<ShimStatus> status(const fs::path& bundle) override {
    auto t = readFile(bundle / "status");
    if (!t) return std::nullopt;
    return parseShimStatus(*t);
  }
  bool available() const override { return true; }

  void exit(const std::string& id, int code, int sig) {
    state[id] = "stopped";
    write(id, "exited", code, sig);
  }

  std::map<std::string, int> launches;
  std::map<std::string, std::string> state;
  std::map<std::string, fs::path> bundles;
  std::vector<std::string> kills;

 private:
  void write(const std::string& id, const std::string& st, int code, int sig) {
    ShimStatus s;
    s.state = st;
    s.shimPid = ::getpid();
    s.pid = 1000;
    s.exitCode = sig ? 128 + sig : code;
    s.signal = sig;
    s.startedMs = 1000 + launches[id];
    s.bootId = currentBootId();
    REQUIRE(writeFileAtomic(bundles[id] / "status", formatShimStatus(s)).ok());
  }
};

struct Env {
  outrider::test::TempDir dir{"ctrec"};
  boost::asio::io_context io;
  std::shared_ptr<FakeRuntime> rt = std::make_shared<FakeRuntime>();
  std::vector<std::string> events;
  CtSettings settings;

  Env() {
    settings.stateDir = dir / "state";
    settings.imagesDir = dir / "images";
    settings.cgroupRoot = dir / "cgroup";
    settings.runtimeRoot = dir / "run";
    fs::create_directories(dir / "cgroup");
    fs::create_directories(settings.imagesDir / "img" / "rootfs" / "bin");
    std::ofstream(settings.imagesDir / "img" / "rootfs" / "bin" / "sh") << "x";
    std::ofstream(settings.imagesDir / "img" / "image.info") << "digest sha256:00\nsize 1\n";
  }
  std::shared_ptr<ContainerManager> manager() {
    auto m = std::make_shared<ContainerManager>(
        io, settings, rt, [this](const std::string& n, const std::string& d) { events.push_back(n + " " + d); }, 2);
    m->start();
    return m;
  }
  /// Run the loop until the manager's worker-thread work (bundle builds) has come back.
  void settle(ContainerManager& m) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    do {
      io.restart();
      io.run_for(std::chrono::milliseconds(5));
    } while (m.busy() && std::chrono::steady_clock::now() < deadline);
    REQUIRE_FALSE(m.busy());
  }
  v1::LocalReply apply(ContainerManager& m, const v1::CtApplyRequest& r) {
    auto reply = m.apply(r);
    settle(m);
    return reply;
  }
  bool saw(const std::string& e) const { return std::find(events.begin(), events.end(), e) != events.end(); }
};

v1::ContainerSpec spec(const std::string& name, bool stopped = false) {
  v1::ContainerSpec s;
  s.set_name(name);
  s.set_image("img");
  s.add_args("sh");
  s.set_stopped(stopped);
  return s;
}

v1::CtApplyRequest apply(std::vector<v1::ContainerSpec> specs, std::uint64_t v = 1) {
  v1::CtApplyRequest r;
  for (auto& s : specs) *r.add_containers() = s;
  r.set_manifest_version(v);
  return r;
}

std::map<std::string, std::string> actions(const v1::LocalReply& r) {
  std::map<std::string, std::string> out;
  for (auto& x : r.apply().results()) out[x.name()] = x.ok() ? x.action() : "error: " + x.error();
  return out;
}

v1::CtActionRequest act(const std::string& n, v1::CtActionRequest::Action a) {
  v1::CtActionRequest r;
  r.set_name(n);
  r.set_action(a);
  return r;
}

v1::ContainerInfo find(ContainerManager& m, const std::string& n) {
  auto reply = m.list(false);
  for (auto& c : reply.ct_list().containers())
    if (c.name() == n) return c;
  FAIL("no container " << n);
  return {};
}

}  // namespace

TEST_CASE("reconcile against the fake runtime") {
  Env env;
  auto m = env.manager();

  auto r = env.apply(*m, apply({spec("a"), spec("b", true)}));
  CHECK(actions(r) == std::map<std::string, std::string>{{"a", "started"}, {"b", "created"}});
  CHECK(env.rt->launches["a"] == 1);
  CHECK(env.rt->launches.count("b") == 0);
  CHECK(find(*m, "a").state() == "running");
  CHECK(find(*m, "b").state() == "stopped");
  CHECK(env.saw("a running"));
  CHECK(fs::exists(env.settings.stateDir / "a" / "config.json"));
  CHECK(fs::exists(env.settings.stateDir / "a" / "rootfs" / "bin" / "sh"));  // its own writable copy

  SUBCASE("an unchanged apply changes nothing") {
    CHECK(actions(env.apply(*m, apply({spec("a"), spec("b", true)}))) ==
          std::map<std::string, std::string>{{"a", "unchanged"}, {"b", "unchanged"}});
    m->reconcile();
    CHECK(env.rt->launches["a"] == 1);
  }

  SUBCASE("an exit under restart=never stays exited; START runs it again") {
    env.rt->exit("a", 2, 0);
    m->pollStatus();
    CHECK(env.saw("a exited code=2"));
    m->reconcile();
    CHECK(env.rt->launches["a"] == 1);
    auto i = find(*m, "a");
    CHECK(i.exited());
    CHECK(i.exit_code() == 2);
    CHECK(m->action(act("a", v1::CtActionRequest::START)).has_ct());
    CHECK(env.rt->launches["a"] == 2);
    CHECK(m->action(act("a", v1::CtActionRequest::START)).error().code() == LocalError::CONFLICT);
  }

  SUBCASE("an operator's STOP holds across reconcile and a restart of vmm; a changed apply overrides it") {
    auto st = m->action(act("a", v1::CtActionRequest::STOP));
    CHECK_FALSE(st.has_error());
    m->pollStatus();
    CHECK(env.saw("a killed signal=15"));
    CHECK(m->action(act("a", v1::CtActionRequest::STOP)).error().code() == LocalError::CONFLICT);
    m->reconcile();
    CHECK(env.rt->launches["a"] == 1);
    m->shutdown();
    m = env.manager();  // vmm restarted: the override was persisted
    CHECK(env.rt->launches["a"] == 1);
    CHECK_FALSE(find(*m, "a").desired_running());
    auto s2 = spec("a");
    s2.set_memory_bytes(16u << 20);
    CHECK(actions(env.apply(*m, apply({s2, spec("b", true)}, 2)))["a"] == "recreated");
    CHECK(env.rt->launches["a"] == 2);
    CHECK(find(*m, "a").desired_running());
  }

  SUBCASE("a changed spec recreates a running container; removal from the set removes it") {
    auto s2 = spec("a");
    s2.add_env("X=1");
    CHECK(actions(env.apply(*m, apply({s2}, 2))) ==
          std::map<std::string, std::string>{{"a", "recreated"}, {"b", "removed"}});
    CHECK(std::find(env.rt->kills.begin(), env.rt->kills.end(), "a TERM") != env.rt->kills.end());
    m->pollStatus();  // the stop completes, then the new bundle is built and launched
    env.settle(*m);
    CHECK(env.rt->launches["a"] == 2);
    CHECK(env.saw("b removed"));
    CHECK_FALSE(fs::exists(env.settings.stateDir / "b"));
    auto cfg = readFile(env.settings.stateDir / "a" / "config.json");
    REQUIRE(cfg.ok());
    CHECK(cfg->find("X=1") != std::string::npos);
  }

  SUBCASE("adoption after a restart: running containers are not started twice; leftovers go") {
    m->shutdown();
    m.reset();
    env.rt->state["stray"] = "running";  // in the runtime, not ours
    m = env.manager();
    CHECK(env.rt->launches["a"] == 1);
    CHECK(find(*m, "a").state() == "running");
    CHECK(env.rt->state.count("stray") == 0);
  }

  SUBCASE("bad requests change nothing") {
    auto before = readFile(env.settings.stateDir / "desired");
    REQUIRE(before.ok());
    auto dup = env.apply(*m, apply({spec("c"), spec("c")}, 9));
    CHECK(dup.error().code() == LocalError::BAD_REQUEST);
    CHECK(*readFile(env.settings.stateDir / "desired") == *before);
    auto bad = spec("c");
    bad.set_image("missing");
    auto r2 = env.apply(*m, apply({spec("a"), spec("b", true), bad}, 3));
    CHECK(actions(r2)["c"].find("not imported") != std::string::npos);
    CHECK(env.rt->launches.count("c") == 0);
    CHECK(m->action(act("zz", v1::CtActionRequest::STOP)).error().code() == LocalError::NOT_FOUND);
    CHECK(m->action(act("b", v1::CtActionRequest::STOP)).error().code() == LocalError::CONFLICT);
    CHECK(m->action(act("a", v1::CtActionRequest::ACTION_UNSPECIFIED)).error().code() == LocalError::BAD_REQUEST);
    CHECK(m->logs([] { v1::CtLogsRequest l; l.set_name("zz"); return l; }()).error().code() == LocalError::NOT_FOUND);
  }

  SUBCASE("DELETE removes bundle and runtime state and takes it out of the desired set") {
    auto d = m->action(act("a", v1::CtActionRequest::DELETE));
    CHECK_FALSE(d.has_error());
    CHECK(env.rt->state.count("a") == 0);
    CHECK_FALSE(fs::exists(env.settings.stateDir / "a"));
    m->reconcile();
    CHECK(env.rt->launches["a"] == 1);
    CHECK(m->action(act("a", v1::CtActionRequest::START)).error().code() == LocalError::NOT_FOUND);
  }
  m->shutdown();
}

TEST_CASE("a container waiting out its restart backoff when vmm restarts is restarted, its count kept") {
  Env env;
  auto m = env.manager();
  auto s = spec("a");
  s.set_restart(v1::ContainerSpec::ALWAYS);
  REQUIRE(actions(env.apply(*m, apply({s})))["a"] == "started");
  REQUIRE(env.rt->launches["a"] == 1);
  auto runFor = [&](std::chrono::milliseconds d) {
    env.io.restart();
    env.io.run_for(d);
  };
  auto until = [&](const std::function<bool()>& cond, std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!cond() && std::chrono::steady_clock::now() < end) runFor(std::chrono::milliseconds(20));
    return cond();
  };
  // First exit: restarted after 1 s.
  env.rt->exit("a", 1, 0);
  m->pollStatus();
  CHECK(find(*m, "a").state() == "restarting");
  REQUIRE(until([&] { return env.rt->launches["a"] == 2; }, std::chrono::seconds(5)));
  m->pollStatus();
  CHECK(find(*m, "a").restarts() == 1);
  // Second exit: a 2 s backoff, and vmm restarts in the middle of it.
  env.rt->exit("a", 1, 0);
  m->pollStatus();
  REQUIRE(find(*m, "a").state() == "restarting");

  unsigned wantRestarts = 2;
  SUBCASE("with the run state this vmm wrote") {}
  SUBCASE("with the run state an older vmm wrote (the handled run only): the count starts again") {
    auto seen = readFile(env.settings.stateDir / "a" / "seen");
    REQUIRE(seen);
    REQUIRE(writeFileAtomic(env.settings.stateDir / "a" / "seen", seen->substr(0, seen->find(' '))));
    wantRestarts = 1;
  }
  m->shutdown();
  m.reset();
  const auto restartedAt = std::chrono::steady_clock::now();
  m = env.manager();
  CHECK(env.rt->launches["a"] == 2);  // not at once: the backoff goes on
  CHECK(find(*m, "a").state() == "restarting");
  REQUIRE(until([&] { return env.rt->launches["a"] == 3; }, std::chrono::seconds(8)));
  CHECK(std::chrono::steady_clock::now() - restartedAt < std::chrono::seconds(5));
  m->pollStatus();
  CHECK(find(*m, "a").state() == "running");
  CHECK(find(*m, "a").restarts() == wantRestarts);
  m->shutdown();
}
