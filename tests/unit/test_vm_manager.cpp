// The VM manager against an in-memory fake behind VmBackend (planning, apply, actions, persistence,
// adoption), and one contract suite that runs against both the fake and libvirt's test:///default
// driver through LibvirtBackend, with events delivered through the asio event loop.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <fstream>

#include "outrider/vmm/libvirt_backend.hpp"
#include "outrider/vmm/libvirt_events.hpp"
#include "outrider/vmm/vm_manager.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::vmm;
using outrider::v1::LocalError;

namespace {

// A small stateful hypervisor: domains by name, with the metadata hash parsed out of the XML.
class FakeBackend : public VmBackend {
 public:
  struct Dom {
    DomainRecord rec;
    std::string xml;
    bool autostart = false;
  };
  std::map<std::string, Dom> doms;
  bool up = true;
  bool shutdownWorks = true;  // false: the guest ignores ACPI
  int nextId = 1;
  int defines = 0, starts = 0;
  EventFn onEvent;

  void emit(const std::string& n, std::string state, std::string reason) {
    if (onEvent) onEvent({n, std::move(state), std::move(reason)});
  }
  static std::string between(const std::string& x, const std::string& a, const std::string& b) {
    auto p = x.find(a);
    if (p == std::string::npos) return "";
    p += a.size();
    return x.substr(p, x.find(b, p) - p);
  }
  bool connected() const override { return up; }
  Result<std::vector<DomainRecord>> listManaged() override {
    if (!up) return Error{"down"};
    std::vector<DomainRecord> out;
    for (auto& [n, d] : doms)
      if (d.rec.managed) out.push_back(d.rec);
    return out;
  }
  Result<std::optional<DomainRecord>> lookup(const std::string& n) override {
    if (!up) return Error{"down"};
    auto it = doms.find(n);
    if (it == doms.end()) return std::optional<DomainRecord>{};
    return std::optional<DomainRecord>(it->second.rec);
  }
  Status define(const std::string& xml) override {
    std::string n = between(xml, "<name>", "</name>");
    if (auto it = doms.find(n); it != doms.end() && xml.find("<uuid>" + it->second.rec.uuid + "</uuid>") == std::string::npos)
      return Error{"domain " + n + " already exists with another uuid"};
    auto& d = doms[n];
    bool fresh = d.rec.name.empty();
    d.xml = xml;
    d.rec.name = n;
    if (fresh) {
      d.rec.uuid = "uuid-" + n;
      d.rec.state = "shutoff";
    }
    d.rec.managed = xml.find("spec-hash") != std::string::npos;
    d.rec.specHash = between(xml, "spec-hash>", "<");
    ++defines;
    emit(n, "defined", fresh ? "added" : "updated");
    return {};
  }
  Status start(const std::string& n) override {
    auto it = doms.find(n);
    if (it == doms.end()) return Error{"no domain " + n};
    if (it->second.rec.active) return Error{"already running"};
    it->second.rec.active = true;
    it->second.rec.state = "running";
    it->second.rec.id = nextId++;
    ++starts;
    emit(n, "running", "booted");
    return {};
  }
  Status shutdown(const std::string& n) override {
    auto it = doms.find(n);
    if (it == doms.end() || !it->second.rec.active) return Error{"not running"};
    if (shutdownWorks) off(n, "shutdown");
    return {};
  }
  void off(const std::string& n, const char* why) {
    auto& r = doms[n].rec;
    r.active = false;
    r.state = "shutoff";
    r.id = -1;
    emit(n, "shutoff", why);
  }
  Status destroy(const std::string& n) override {
    auto it = doms.find(n);
    if (it == doms.end() || !it->second.rec.active) return Error{"not running"};
    off(n, "destroyed");
    return {};
  }
  Status reboot(const std::string& n) override {
    auto it = doms.find(n);
    if (it == doms.end() || !it->second.rec.active) return Error{"not running"};
    return {};
  }
  Status undefine(const std::string& n) override {
    if (!doms.erase(n)) return Error{"no domain " + n};
    emit(n, "undefined", "removed");
    return {};
  }
  Status setAutostart(const std::string& n, bool on) override {
    doms[n].autostart = on;
    return {};
  }
  Result<v1::VmStats> stats(const std::string&) override {
    v1::VmStats s;
    s.set_cpu_time_ns(42);
    return s;
  }
  Result<std::set<std::string>> guestArchs() override { return std::set<std::string>{"x86_64"}; }
  void setEventHandler(EventFn fn) override { onEvent = std::move(fn); }
};

struct Guest {
  test::TempDir dir{"vmmgr"};
  std::string kernel = (dir / "vmlinux").string();
  Guest() { std::ofstream(kernel) << "k"; }
  v1::VmSpec spec(const std::string& name, std::uint64_t mib = 64, bool stopped = false) const {
    v1::VmSpec s;
    s.set_name(name);
    s.set_vcpus(1);
    s.set_memory_mib(mib);
    s.mutable_kernel()->set_kernel(kernel);
    s.set_stopped(stopped);
    return s;
  }
};

HostInfo host() {
  HostInfo h;
  h.memTotalMib = 1024;
  h.threads = 2;
  h.archs = {"x86_64"};
  return h;
}

struct Rig {
  Guest g;
  FakeBackend fake;
  std::chrono::steady_clock::time_point now{std::chrono::seconds(1000)};
  std::vector<std::string> events;
  ManagerOptions opts() {
    ManagerOptions o;
    o.stateDir = g.dir / "state";
    o.logDir = g.dir / "log";
    o.accel = "tcg";
    o.stopTimeout = std::chrono::seconds(5);
    return o;
  }
  std::unique_ptr<VmManager> make() {
    auto m = std::make_unique<VmManager>(
        fake, opts(), host(), [this](std::string k, std::string s, std::string d) { events.push_back(k + " " + s + " " + d); },
        [this] { return now; });
    fake.setEventHandler([m = m.get()](const LifecycleEvent& ev) { m->onEvent(ev); });
    return m;
  }
};

v1::VmApplyRequest applyOf(std::initializer_list<v1::VmSpec> specs, std::uint64_t version = 1) {
  v1::VmApplyRequest r;
  for (const auto& s : specs) *r.add_vms() = s;
  r.set_manifest_version(version);
  return r;
}

Result<v1::VmInfo> act(VmManager& m, const std::string& name, v1::VmActionRequest::Action a) {
  v1::VmActionRequest req;
  req.set_name(name);
  req.set_action(a);
  std::optional<Result<v1::VmInfo>> out;
  m.action(req, [&out](Result<v1::VmInfo> r) { out.emplace(std::move(r)); });
  REQUIRE(out.has_value());
  return std::move(*out);
}

const v1::WorkloadResult* resultFor(const v1::ApplyResult& r, const std::string& name) {
  for (const auto& w : r.results())
    if (w.name() == name) return &w;
  return nullptr;
}

}  // namespace

TEST_CASE("planReconcile: removals first, then definitions, then starts and stops") {
  Guest g;
  std::map<std::string, DesiredVm> desired;
  desired["new"] = {g.spec("new"), true};
  desired["changed"] = {g.spec("changed", 128), true};
  desired["same-off"] = {g.spec("same-off"), false};
  desired["idle"] = {g.spec("idle"), true};
  std::vector<DomainRecord> actual;
  auto rec = [](std::string n, std::string hash, bool active) {
    DomainRecord r;
    r.name = std::move(n);
    r.specHash = std::move(hash);
    r.active = active;
    r.managed = true;
    return r;
  };
  actual.push_back(rec("changed", "old", true));
  actual.push_back(rec("same-off", specHash(g.spec("same-off"), "tcg"), true));
  actual.push_back(rec("idle", specHash(g.spec("idle"), "tcg"), false));
  actual.push_back(rec("gone", "x", true));
  DomainRecord foreign = rec("foreign", "", true);
  foreign.managed = false;
  actual.push_back(foreign);

  auto steps = planReconcile(desired, actual, "tcg", {});
  std::vector<Step> want{{StepKind::remove, "gone"},    {StepKind::redefine, "changed"}, {StepKind::define, "new"},
                         {StepKind::start, "idle"},     {StepKind::start, "new"},        {StepKind::stop, "same-off"}};
  CHECK(steps == want);
  // Nothing to do once actual matches; a stop under way is not repeated; an accel change redefines.
  CHECK(planReconcile(desired, actual, "tcg", {"same-off", "gone"}).size() == 4);
  CHECK(planReconcile({}, {foreign}, "tcg", {}).empty());
}

TEST_CASE("apply defines and starts, is idempotent, and reports per item; a bad item does not stop the others") {
  Rig rig;
  auto m = rig.make();
  auto bad = rig.g.spec("bad");
  bad.mutable_kernel()->set_kernel("/nonexistent/kernel");
  auto r = m->apply(applyOf({rig.g.spec("a"), bad, rig.g.spec("b", 64, true)}));
  REQUIRE(r.ok());
  REQUIRE(resultFor(*r, "a"));
  CHECK(resultFor(*r, "a")->ok());
  CHECK(resultFor(*r, "a")->action() == "defined, started");
  CHECK_FALSE(resultFor(*r, "bad")->ok());
  CHECK(resultFor(*r, "bad")->error().find("does not exist") != std::string::npos);
  CHECK(resultFor(*r, "b")->action() == "defined");
  CHECK(rig.fake.doms.at("a").rec.active);
  CHECK_FALSE(rig.fake.doms.at("b").rec.active);
  CHECK_FALSE(rig.fake.doms.count("bad"));
  CHECK(std::find(rig.events.begin(), rig.events.end(), "vm.state a running (booted)") != rig.events.end());

  int defines = rig.fake.defines, starts = rig.fake.starts;
  auto again = m->apply(applyOf({rig.g.spec("a"), rig.g.spec("b", 64, true)}));
  REQUIRE(again.ok());
  CHECK(resultFor(*again, "a")->action() == "unchanged");
  CHECK(rig.fake.defines == defines);
  CHECK(rig.fake.starts == starts);
}

TEST_CASE("apply with duplicate names is refused as a whole and changes nothing") {
  Rig rig;
  auto m = rig.make();
  REQUIRE(m->apply(applyOf({rig.g.spec("a")})).ok());
  auto r = m->apply(applyOf({rig.g.spec("x"), rig.g.spec("x")}));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == LocalError::CONFLICT);
  CHECK(m->desired().count("a"));
  CHECK_FALSE(m->desired().count("x"));
  CHECK_FALSE(rig.fake.doms.count("x"));
}

TEST_CASE("memory admission refuses the VM that would overcommit, keeps the others") {
  Rig rig;
  auto m = rig.make();
  auto r = m->apply(applyOf({rig.g.spec("a", 600), rig.g.spec("b", 600), rig.g.spec("c", 400)}));
  REQUIRE(r.ok());
  CHECK(resultFor(*r, "a")->ok());
  CHECK_FALSE(resultFor(*r, "b")->ok());
  CHECK(resultFor(*r, "b")->error().find("memory_overcommit") != std::string::npos);
  CHECK(resultFor(*r, "c")->ok());
  CHECK_FALSE(rig.fake.doms.count("b"));
}

TEST_CASE("changed spec is redefined; removed VM is stopped and undefined with its files") {
  Rig rig;
  auto m = rig.make();
  REQUIRE(m->apply(applyOf({rig.g.spec("a"), rig.g.spec("b")})).ok());
  std::filesystem::create_directories(m->diskDir("b"));
  std::ofstream(m->consoleLog("b")) << "log";
  auto r = m->apply(applyOf({rig.g.spec("a", 128)}, 2));
  REQUIRE(r.ok());
  CHECK(resultFor(*r, "a")->action() == "redefined (applies at next boot)");
  CHECK(rig.fake.doms.at("a").rec.specHash == specHash(rig.g.spec("a", 128), "tcg"));
  CHECK(resultFor(*r, "b")->action() == "removed");
  CHECK_FALSE(rig.fake.doms.count("b"));
  CHECK_FALSE(std::filesystem::exists(m->diskDir("b")));
  CHECK_FALSE(std::filesystem::exists(m->consoleLog("b")));
}

TEST_CASE("actions: unknown and bad names, conflicts, and an operator's stop survives reconcile") {
  Rig rig;
  auto m = rig.make();
  REQUIRE(m->apply(applyOf({rig.g.spec("a")})).ok());
  auto unknown = act(*m, "nope", v1::VmActionRequest::STOP);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == LocalError::NOT_FOUND);
  auto badName = act(*m, "../x", v1::VmActionRequest::START);
  REQUIRE_FALSE(badName.ok());
  CHECK(badName.error().code == LocalError::BAD_REQUEST);
  auto twice = act(*m, "a", v1::VmActionRequest::START);
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.error().code == LocalError::CONFLICT);

  auto stop = act(*m, "a", v1::VmActionRequest::STOP);
  REQUIRE(stop.ok());
  CHECK(stop->state() == "shutoff");
  CHECK_FALSE(stop->desired_running());
  m->reconcile("timer");
  CHECK_FALSE(rig.fake.doms.at("a").rec.active);
  auto again = act(*m, "a", v1::VmActionRequest::STOP);
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().code == LocalError::CONFLICT);

  // The same manifest again keeps the operator's stop; a changed one sets the desired state again.
  REQUIRE(m->apply(applyOf({rig.g.spec("a")}, 2)).ok());
  CHECK_FALSE(rig.fake.doms.at("a").rec.active);
  REQUIRE(m->apply(applyOf({rig.g.spec("a", 96)}, 3)).ok());
  CHECK(rig.fake.doms.at("a").rec.active);
}

TEST_CASE("a guest that ignores ACPI is destroyed after the timeout; STOP completes then") {
  Rig rig;
  auto m = rig.make();
  REQUIRE(m->apply(applyOf({rig.g.spec("a")})).ok());
  rig.fake.shutdownWorks = false;
  v1::VmActionRequest req;
  req.set_name("a");
  req.set_action(v1::VmActionRequest::STOP);
  req.set_timeout_s(2);
  std::optional<Result<v1::VmInfo>> out;
  m->action(req, [&out](Result<v1::VmInfo> r) { out.emplace(std::move(r)); });
  CHECK_FALSE(out.has_value());
  CHECK(m->busy());
  rig.now += std::chrono::seconds(1);
  m->tick();
  CHECK_FALSE(out.has_value());
  rig.now += std::chrono::seconds(2);
  m->tick();
  REQUIRE(out.has_value());
  REQUIRE(out->ok());
  CHECK((*out)->state() == "shutoff");
  CHECK(std::find(rig.events.begin(), rig.events.end(), "vm.state a shutoff (destroyed)") != rig.events.end());
}

TEST_CASE("desired state persists; a restarted manager adopts running domains instead of duplicating them") {
  Rig rig;
  {
    auto m = rig.make();
    REQUIRE(m->apply(applyOf({rig.g.spec("a"), rig.g.spec("b")}, 7)).ok());
    REQUIRE(act(*m, "b", v1::VmActionRequest::STOP).ok());
  }
  int id = rig.fake.doms.at("a").rec.id, starts = rig.fake.starts, defines = rig.fake.defines;
  auto m = rig.make();
  REQUIRE(m->load().ok());
  CHECK(m->desired().size() == 2);
  CHECK_FALSE(m->desired().at("b").running);
  m->reconcile("connected");
  CHECK(rig.fake.doms.at("a").rec.id == id);
  CHECK(rig.fake.starts == starts);
  CHECK(rig.fake.defines == defines);
  CHECK_FALSE(rig.fake.doms.at("b").rec.active);

  // A torn state file is refused, and the manager then touches nothing.
  std::ofstream(m->stateFile(), std::ios::app) << "garbage";
  auto m2 = rig.make();
  CHECK_FALSE(m2->load().ok());
  CHECK(m2->desired().empty());
}

TEST_CASE("a foreign domain with the same name is never touched") {
  Rig rig;
  auto m = rig.make();
  rig.fake.doms["mine"].rec = DomainRecord{"mine", "u", 5, "running", "booted", true, false, "", 1, 64};
  auto r = m->apply(applyOf({rig.g.spec("mine")}));
  REQUIRE(r.ok());
  CHECK_FALSE(resultFor(*r, "mine")->ok());
  CHECK(resultFor(*r, "mine")->error().find("does not manage") != std::string::npos);
  CHECK_FALSE(rig.fake.doms.at("mine").rec.managed);
  // DELETE drops it from the desired set, but the foreign domain itself stays.
  CHECK(act(*m, "mine", v1::VmActionRequest::DELETE).ok());
  CHECK(rig.fake.doms.count("mine"));
  CHECK(rig.fake.doms.at("mine").rec.active);
}

TEST_CASE("console tail: last bytes, truncated flag, unknown VM") {
  Rig rig;
  auto m = rig.make();
  REQUIRE(m->apply(applyOf({rig.g.spec("a")})).ok());
  std::ofstream(m->consoleLog("a")) << "0123456789MARKER";
  v1::VmConsoleRequest req;
  req.set_name("a");
  req.set_max_bytes(6);
  auto t = m->console(req);
  REQUIRE(t.ok());
  CHECK(t->data() == "MARKER");
  CHECK(t->truncated());
  req.set_name("zz");
  auto u = m->console(req);
  REQUIRE_FALSE(u.ok());
  CHECK(u.error().code == LocalError::NOT_FOUND);
}

// ---------------------------------------------------------------- contract: fake and libvirt test driver

namespace {

struct FakeSide {
  FakeBackend b;
  boost::asio::io_context io;
  VmBackend& backend() { return b; }
  void pump() {}
};

struct TestDriverSide {
  boost::asio::io_context io;
  LibvirtBackend b{"test:///default"};
  TestDriverSide() {
    installLibvirtEventLoop(io);
    auto st = b.connect();
    REQUIRE_MESSAGE(st.ok(), (st ? "" : st.error().message));
  }
  ~TestDriverSide() {
    b.disconnect();
    io.restart();
    io.run_for(std::chrono::milliseconds(50));
  }
  VmBackend& backend() { return b; }
  void pump() {
    io.restart();
    io.run_for(std::chrono::milliseconds(100));
  }
};

std::string contractXml(const std::string& name, const std::string& hash, const std::string& uuid = "") {
  return "<domain type='test'><name>" + name + "</name>" + (uuid.empty() ? "" : "<uuid>" + uuid + "</uuid>") + "<metadata>" + metadataXml(hash) +
         "</metadata><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>";
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("VmBackend contract", Side, vm_backend_contract) {
  Side side;
  VmBackend& b = side.backend();
  std::vector<std::string> seen;
  b.setEventHandler([&seen](const LifecycleEvent& ev) { seen.push_back(ev.name + " " + ev.state + " (" + ev.reason + ")"); });
  const std::string name = "contract-" + std::to_string(::getpid());
  CHECK(b.connected());
  auto archs = b.guestArchs();
  REQUIRE(archs.ok());
  CHECK_FALSE(archs->empty());

  REQUIRE(b.define(contractXml(name, "h1")).ok());
  auto rec = b.lookup(name);
  REQUIRE(rec.ok());
  REQUIRE(rec->has_value());
  CHECK((*rec)->managed);
  CHECK((*rec)->specHash == "h1");
  CHECK_FALSE((*rec)->active);
  auto listed = b.listManaged();
  REQUIRE(listed.ok());
  bool found = false, foreign = false;
  for (const auto& r : *listed) found |= r.name == name, foreign |= !r.managed;
  CHECK(found);
  CHECK_FALSE(foreign);

  REQUIRE(b.start(name).ok());
  rec = b.lookup(name);
  CHECK((*rec)->active);
  CHECK((*rec)->state == "running");
  CHECK(b.stats(name).ok());
  CHECK_FALSE(b.define(contractXml(name, "h2")).ok());  // same name, no UUID: a second domain, refused
  REQUIRE(b.define(contractXml(name, "h2", (*rec)->uuid)).ok());
  CHECK((*b.lookup(name))->specHash == "h2");
  REQUIRE(b.destroy(name).ok());
  CHECK_FALSE((*b.lookup(name))->active);
  CHECK_FALSE(b.destroy(name).ok());
  REQUIRE(b.undefine(name).ok());
  CHECK_FALSE(b.lookup(name)->has_value());

  side.pump();
  auto has = [&seen](const std::string& s) { return std::find(seen.begin(), seen.end(), s) != seen.end(); };
  INFO("events: " << [&] { std::string all; for (auto& s : seen) all += s + "; "; return all; }());
  CHECK(has(name + " defined (added)"));
  CHECK(has(name + " running (booted)"));
  CHECK(has(name + " shutoff (destroyed)"));
  CHECK(has(name + " undefined (removed)"));
}
TEST_CASE_TEMPLATE_INVOKE(vm_backend_contract, FakeSide, TestDriverSide);

TEST_CASE("the asio event loop leaves no registrations behind when the connection closes") {
  std::size_t before = libvirtEventRegistrations();
  {
    TestDriverSide side;
    CHECK(libvirtEventRegistrations() >= before);
  }
  CHECK(libvirtEventRegistrations() == before);
}

TEST_CASE("a guest that goes off by itself soon after each start is started again after a growing delay") {
  Rig rig;
  auto m = rig.make();
  REQUIRE(m->apply(applyOf({rig.g.spec("a")})).ok());
  REQUIRE(rig.fake.starts == 1);
  auto lastError = [&] {
    auto l = m->list(false);
    REQUIRE(l.ok());
    for (const auto& v : l->vms())
      if (v.name() == "a") return v.last_error();
    return std::string("?");
  };
  // It powers off 5 s after each start (as a guest whose init fails would), and the service reconciles
  // on every such event and every second here.
  auto offAfterBoot = [&] {
    rig.now += std::chrono::seconds(5);
    rig.fake.off("a", "shutdown");
    m->reconcile("event");
  };
  auto secondsUntilStart = [&] {
    const int before = rig.fake.starts;
    for (int s = 0; s <= 120; ++s) {
      if (rig.fake.starts > before) return s;
      rig.now += std::chrono::seconds(1);
      m->reconcile("timer");
    }
    return -1;
  };
  std::vector<int> waits;
  for (int i = 0; i < 8; ++i) {
    offAfterBoot();
    if (i == 2) CHECK(lastError().find("starting it again in") != std::string::npos);
    waits.push_back(secondsUntilStart());
  }
  CHECK(waits == std::vector<int>{1, 2, 4, 8, 16, 32, 60, 60});
  CHECK(lastError().empty());  // started again: nothing held back

  // A run of a minute or more starts the count again: the next start comes at once.
  rig.now += std::chrono::seconds(61);
  rig.fake.off("a", "shutdown");
  m->reconcile("event");
  CHECK(rig.fake.starts == 10);

  // An operator's START is never held back.
  offAfterBoot();
  offAfterBoot();  // not started yet: it waits
  const int held = rig.fake.starts;
  REQUIRE_FALSE(rig.fake.doms.at("a").rec.active);
  auto start = act(*m, "a", v1::VmActionRequest::START);
  REQUIRE(start.ok());
  CHECK(rig.fake.starts == held + 1);

  // Nor is a VM whose spec the manifest changed.
  offAfterBoot();
  REQUIRE_FALSE(rig.fake.doms.at("a").rec.active);
  REQUIRE(m->apply(applyOf({rig.g.spec("a", 96)}, 2)).ok());
  CHECK(rig.fake.doms.at("a").rec.active);

  // Stops of vmm's own do not count.
  for (int i = 0; i < 3; ++i) {
    REQUIRE(act(*m, "a", v1::VmActionRequest::STOP).ok());
    REQUIRE(act(*m, "a", v1::VmActionRequest::START).ok());
  }
  rig.now += std::chrono::seconds(70);
  rig.fake.off("a", "shutdown");
  m->reconcile("event");
  CHECK(rig.fake.doms.at("a").rec.active);
}
