// guest_start_vm: how long a VM start takes through the whole node, next to a bare libvirt start of the
// same domain measured in the same run.
//
// Node: a real Mosquitto (mutual TLS + ACL), outrider-agent, outrider-vmm (TCG) and outrider-netd. A VM
// (the tiny guest, direct kernel boot, no disk, no network) is defined by an apply with stopped = true.
// Each trial publishes a signed `vm start` command as the hub and takes the time until the hub receives
// the `vm.state ... running` NodeEvent; the VM is then stopped again.
// Baseline: the same domain XML (without outrider's metadata) defined directly through the libvirt C
// API; each trial takes the time from the virDomainCreate call to the VIR_DOMAIN_EVENT_STARTED lifecycle
// event, then destroys it. Trials alternate between the two in ABBA order (node first on even trials,
// bare first on odd ones), so both see the same machine load, and each start waits a moment after the
// previous guest's destroy, so neither side inherits the other's clean-up.
// A start's libvirt part varies by ±150 ms here (TCG on two cores) and swamps a difference of a few ms
// between two end-to-end medians, so the overhead is taken apart around what libvirt does:
//  - head: the hub's publish to the moment libvirtd creates the domain's pid file (inotify on its run
//    directory), against the same span from a bare virDomainCreate call: libvirtd's work before it
//    forks QEMU is short and steady, so the difference of the medians is what outrider adds before
//    libvirt starts;
//  - tail: the STARTED lifecycle event as the bench's own libvirt connection sees it, to the running
//    NodeEvent at the hub: vmm, the agent and the broker passing the event on.
// The end-to-end medians are printed next to them.
// Also: outrider-vmm's VmRSS after an apply of 10 small defined-but-stopped VMs, next to the VmRSS of
// the smallest client doing vmm's libvirt calls (bench_libvirt_client_floor, run in the same run): the
// libvirt client library and the ~55 libraries it loads are most of vmm's resident memory.
//
// Usage: bench_guest_start_vm [TRIALS]   (default 12)
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "outrider/common/c_handle.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/common/unique_fd.hpp"
#include "outrider/ctl/command_client.hpp"
#include "outrider/ctl/hub_client.hpp"
#include "support/libvirt_fixture.hpp"
#include "support/node_fixture.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;

namespace {

const char* kNode = "n1";

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double ms(Steady::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

long vmRssKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

std::string fmtList(const std::vector<double>& v) {
  std::string out;
  char buf[32];
  for (double x : v) {
    std::snprintf(buf, sizeof buf, "%s%.1f", out.empty() ? "" : " ", x);
    out += buf;
  }
  return out;
}

void result(const char* figure, double value, const char* unit, double baseline, const std::string& goal, bool pass) {
  if (baseline > 0)
    std::printf("RESULT guest_start.%s value=%.1f unit=%s baseline=%.1f ratio=%.3f goal=%s %s\n", figure, value, unit,
                baseline, value / baseline, goal.c_str(), pass ? "PASS" : "FAIL");
  else
    std::printf("RESULT guest_start.%s value=%.1f unit=%s baseline=- ratio=- goal=%s %s\n", figure, value, unit,
                goal.c_str(), pass ? "PASS" : "FAIL");
}

/// The hub side: signed commands published on the node's command topic, with every message that arrives
/// meanwhile (replies, events) handed to the caller.
class Hub {
 public:
  Hub(ctl::HubClient& client, const crypto::SigningKey& key) : client_(client), key_(key) {}

  using OnMessage = std::function<void(const ctl::Message&)>;

  /// Publish a command made by `fill`; returns the final reply (or nothing by `timeout`). `t0` gets the
  /// moment just before the publish.
  std::optional<v1::CommandReply> run(const std::function<void(v1::CommandBody&)>& fill,
                                      std::chrono::milliseconds timeout, const OnMessage& onMessage = {},
                                      Steady::time_point* t0 = nullptr) {
    auto body = ctl::makeCommandBody(kNode, timeout, SystemClock().nowMs());
    fill(body);
    auto env = ctl::signEnvelope(body, key_).SerializeAsString();
    if (t0) *t0 = Steady::now();
    if (!client_.publish(topics::cmd(kNode), env, false, 5s)) return std::nullopt;
    auto deadline = Steady::now() + timeout;
    while (true) {
      auto m = client_.nextMessage(deadline);
      if (!m) return std::nullopt;
      if (onMessage) onMessage(*m);
      if (m->topic != topics::reply(kNode)) continue;
      v1::CommandReply r;
      if (!r.ParseFromString(m->payload) || r.command_id() != body.command_id()) continue;
      if (r.kind() == v1::CommandReply::SUCCEEDED || r.kind() == v1::CommandReply::FAILED ||
          r.kind() == v1::CommandReply::REJECTED)
        return r;
    }
  }

  /// Wait for a message satisfying `pred` (after those already seen by run()).
  std::optional<ctl::Message> waitFor(const std::function<bool(const ctl::Message&)>& pred, Steady::time_point deadline) {
    while (true) {
      auto m = client_.nextMessage(deadline);
      if (!m) return std::nullopt;
      if (pred(*m)) return *m;
    }
  }

 private:
  ctl::HubClient& client_;
  const crypto::SigningKey& key_;
};

bool isVmEvent(const ctl::Message& m, const std::string& vm, const std::string& state) {
  if (m.topic != topics::events(kNode)) return false;
  v1::NodeEvent e;
  return e.ParseFromString(m.payload) && e.kind() == "vm.state" && e.subject() == vm && e.detail().rfind(state, 0) == 0;
}

v1::VmSpec smallVm(const test::LibvirtFixture& f, const std::string& name, std::uint64_t memoryMib) {
  v1::VmSpec s;
  s.set_name(name);
  s.set_vcpus(1);
  s.set_memory_mib(memoryMib);
  s.set_stopped(true);
  s.mutable_kernel()->set_kernel(f.kernel().string());
  s.mutable_kernel()->set_initrd(f.initrd().string());
  s.mutable_kernel()->set_cmdline("console=ttyS0 panic=-1 quiet");
  return s;
}

/// VmRSS of the minimal libvirt client (bench_libvirt_client_floor, next to this executable) after it
/// connected to `uri` and read every domain; -1 with `problem` set if it could not run.
long libvirtClientFloorKib(const std::string& uri, std::string& problem) {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() / "bench_libvirt_client_floor";
  std::string cmd = "'" + exe.string() + "' '" + uri + "' 2>&1";
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return problem = "cannot run " + exe.string(), -1;
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  int st = ::pclose(p);
  auto at = out.find("rss_kib=");
  if (st != 0 || at == std::string::npos) return problem = exe.string() + ": " + out, -1;
  return std::strtol(out.c_str() + at + 8, nullptr, 10);
}

std::string replyText(const std::optional<v1::CommandReply>& r) {
  if (!r) return "no final reply in time";
  return v1::CommandReply::Kind_Name(r->kind()) + ": " + r->message();
}

// ---- the bare libvirt baseline ----

using VirConnect = CHandle<virConnect, virConnectClose>;
using VirDomain = CHandle<virDomain, virDomainFree>;

std::string lastVirError() {
  const virError* e = virGetLastError();
  return e && e->message ? e->message : "unknown libvirt error";
}

/// The domain vmm would define for smallVm() (same type, machine, features, devices), under another
/// name and without outrider's metadata, so vmm leaves it alone.
std::string bareDomainXml(const test::LibvirtFixture& f, const std::string& name, const std::filesystem::path& log) {
  std::ostringstream x;
  x << "<domain type='qemu'>\n  <name>" << name << "</name>\n  <memory unit='MiB'>128</memory>\n  <vcpu>1</vcpu>\n"
    << "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    <kernel>" << f.kernel().string()
    << "</kernel>\n    <initrd>" << f.initrd().string() << "</initrd>\n"
    << "    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>\n  </os>\n  <features><acpi/></features>\n"
    << "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n"
    << "  <devices>\n    <serial type='file'>\n      <source path='" << log.string() << "' append='off'/>\n"
    << "      <target port='0'/>\n    </serial>\n    <controller type='usb' model='none'/>\n"
    << "    <memballoon model='none'/>\n  </devices>\n</domain>\n";
  return x.str();
}

/// When libvirtd creates a domain's pid file in its run directory (for qemu:///system,
/// /run/libvirt/qemu/NAME.pid): the moment it forks QEMU. An inotify watch read on a thread of its own.
class PidFileWatch {
 public:
  explicit PidFileWatch(const std::filesystem::path& dir) {
    fd_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!fd_ || ::inotify_add_watch(fd_.get(), dir.c_str(), IN_CREATE | IN_MOVED_TO) < 0) {
      problem_ = "inotify on " + dir.string() + ": " + std::strerror(errno);
      return;
    }
    thread_ = std::thread([this] { run(); });
  }
  ~PidFileWatch() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  PidFileWatch(const PidFileWatch&) = delete;
  PidFileWatch& operator=(const PidFileWatch&) = delete;

  const std::string& problem() const { return problem_; }
  void reset() {
    std::lock_guard lk(mu_);
    created_.clear();
  }
  std::optional<Steady::time_point> created(const std::string& domain) {
    std::lock_guard lk(mu_);
    auto it = created_.find(domain + ".pid");
    if (it == created_.end()) return std::nullopt;
    return it->second;
  }

 private:
  void run() {
    alignas(inotify_event) char buf[4096];
    while (!stop_) {
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      auto now = Steady::now();
      for (ssize_t off = 0; n > 0 && off < n;) {
        const auto* e = reinterpret_cast<const inotify_event*>(buf + off);
        if (e->len > 0) {
          std::lock_guard lk(mu_);
          created_.emplace(e->name, now);
        }
        off += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
      }
    }
  }

  std::string problem_;
  UniqueFd fd_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::map<std::string, Steady::time_point> created_;
};

/// libvirt's default event loop on a thread of its own, and the time of the last STARTED event.
struct LifecycleWatch {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<Steady::time_point> started;

  static int onLifecycle(virConnectPtr, virDomainPtr, int event, int, void* self) noexcept {
    if (event != VIR_DOMAIN_EVENT_STARTED) return 0;
    auto* w = static_cast<LifecycleWatch*>(self);
    auto now = Steady::now();
    {
      std::lock_guard lk(w->mu);
      w->started = now;
    }
    w->cv.notify_all();
    return 0;
  }
  std::optional<Steady::time_point> waitStarted(std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu);
    cv.wait_for(lk, timeout, [&] { return started.has_value(); });
    return started;
  }
  void reset() {
    std::lock_guard lk(mu);
    started.reset();
  }
};

/// The baseline: the domain defined directly through libvirt, with libvirt's default event loop on a
/// thread of its own. Undefined again (and the loop stopped) on destruction.
class BareLibvirt {
 public:
  BareLibvirt(const test::LibvirtFixture& f, const std::string& name, const std::filesystem::path& log) {
    if (virEventRegisterDefaultImpl() < 0) {
      problem_ = "virEventRegisterDefaultImpl: " + lastVirError();
      return;
    }
    // A periodic timeout keeps virEventRunDefaultImpl() returning, so the thread sees `stop_`.
    tick_ = virEventAddTimeout(100, [](int, void*) {}, nullptr, nullptr);
    loop_ = std::thread([this] {
      while (!stop_) virEventRunDefaultImpl();
    });
    conn_.reset(virConnectOpen(test::LibvirtFixture::kUri));
    if (!conn_) {
      problem_ = std::string("cannot open ") + test::LibvirtFixture::kUri + ": " + lastVirError();
      return;
    }
    dom_.reset(virDomainDefineXML(conn_.get(), bareDomainXml(f, name, log).c_str()));
    if (!dom_) {
      problem_ = "virDomainDefineXML: " + lastVirError();
      return;
    }
    cb_ = virConnectDomainEventRegisterAny(conn_.get(), dom_.get(), VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                           VIR_DOMAIN_EVENT_CALLBACK(LifecycleWatch::onLifecycle), &watch_, nullptr);
    if (cb_ < 0) problem_ = "virConnectDomainEventRegisterAny: " + lastVirError();
  }
  ~BareLibvirt() {
    if (cb_ >= 0) virConnectDomainEventDeregisterAny(conn_.get(), cb_);
    if (nodeCb_ >= 0) virConnectDomainEventDeregisterAny(conn_.get(), nodeCb_);
    nodeDom_.reset();
    if (dom_) {
      if (virDomainIsActive(dom_.get()) == 1) virDomainDestroy(dom_.get());
      virDomainUndefine(dom_.get());
    }
    dom_.reset();
    conn_.reset();
    stop_ = true;
    if (loop_.joinable()) loop_.join();
    if (tick_ >= 0) virEventRemoveTimeout(tick_);
  }
  BareLibvirt(const BareLibvirt&) = delete;
  BareLibvirt& operator=(const BareLibvirt&) = delete;

  const std::string& problem() const { return problem_; }

  /// Also watch the lifecycle events of the node's domain `name` (defined by vmm), on this connection.
  bool watchNode(const std::string& name) {
    if (!problem_.empty()) return false;
    nodeDom_.reset(virDomainLookupByName(conn_.get(), name.c_str()));
    if (!nodeDom_) return problem_ = "virDomainLookupByName " + name + ": " + lastVirError(), false;
    nodeCb_ = virConnectDomainEventRegisterAny(conn_.get(), nodeDom_.get(), VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                               VIR_DOMAIN_EVENT_CALLBACK(LifecycleWatch::onLifecycle), &nodeWatch_,
                                               nullptr);
    if (nodeCb_ < 0) return problem_ = "virConnectDomainEventRegisterAny: " + lastVirError(), false;
    return true;
  }
  LifecycleWatch& nodeWatch() { return nodeWatch_; }

  struct Start {
    Steady::time_point call, started;
  };
  /// One start: the virDomainCreate call and the STARTED event; the domain is destroyed after.
  std::optional<Start> startOnce() {
    if (!problem_.empty()) return std::nullopt;
    watch_.reset();
    auto t0 = Steady::now();
    if (virDomainCreate(dom_.get()) < 0) {
      problem_ = "virDomainCreate: " + lastVirError();
      return std::nullopt;
    }
    auto t1 = watch_.waitStarted(30s);
    if (!t1) {
      problem_ = "no STARTED lifecycle event within 30 s";
      return std::nullopt;
    }
    if (virDomainDestroy(dom_.get()) < 0) {
      problem_ = "virDomainDestroy: " + lastVirError();
      return std::nullopt;
    }
    return Start{t0, *t1};
  }

 private:
  std::string problem_;
  std::atomic<bool> stop_{false};
  int tick_ = -1;
  std::thread loop_;
  VirConnect conn_;
  VirDomain dom_;
  LifecycleWatch watch_;
  int cb_ = -1;
  VirDomain nodeDom_;
  LifecycleWatch nodeWatch_;
  int nodeCb_ = -1;
};

}  // namespace

int main(int argc, char** argv) {
  const int trials = argc > 1 ? std::max(1, std::atoi(argv[1])) : 12;
  test::LibvirtFixture f;
  if (!f.problem().empty()) {
    std::fprintf(stderr, "bench: %s\n", f.problem().c_str());
    return 1;
  }
  const std::string vm = f.uniqueName("bench-vm");
  const std::string bare = f.uniqueName("bench-bare");
  std::vector<std::string> rssVms;
  for (int i = 0; i < 10; ++i) rssVms.push_back(f.uniqueName("bench-r" + std::to_string(i)));
  // The fixture destroys and undefines these at the end, also when the bench stops early.
  f.track(vm);
  f.track(bare);
  for (const auto& r : rssVms) f.track(r);

  test::NodeFixtureOptions nodeOptions;
  nodeOptions.logLevel = "warning";
  nodeOptions.vmStopTimeoutS = 10;
  test::NodeFixture node(nodeOptions);
  node.startAll();
  ctl::MosquittoLib lib;
  ctl::HubOptions ho;
  ho.broker = *ctl::BrokerUrl::parse(node.broker.url());
  ho.cafile = node.ca.caFile().string();
  ho.cert = node.hubCert().cert.string();
  ho.key = node.hubCert().key.string();
  auto client = ctl::HubClient::connect(ho, 10s);
  if (!client) {
    std::fprintf(stderr, "bench: %s\n", client.error().message.c_str());
    return 1;
  }
  for (const auto& t : {topics::status(kNode), topics::reply(kNode), topics::events(kNode)})
    if (!(*client)->subscribe(t, 5s)) {
      std::fprintf(stderr, "bench: cannot subscribe to %s\n", t.c_str());
      return 1;
    }
  Hub hub(**client, node.operatorKey());
  auto fail = [&](const std::string& what) {
    std::fprintf(stderr, "bench: %s\n%s\n", what.c_str(), node.diagnostics().c_str());
    return 1;
  };

  // The node is ready when its status says online with agent, vmm and netd healthy.
  auto ready = hub.waitFor(
      [](const ctl::Message& m) {
        v1::NodeStatus s;
        if (m.topic != topics::status(kNode) || !s.ParseFromString(m.payload)) return false;
        int healthy = 0;
        for (const auto& d : s.daemons()) healthy += d.state() == v1::DaemonHealth::HEALTHY;
        return s.online() && healthy == 3;
      },
      Steady::now() + 60s);
  if (!ready) return fail("the node did not come online with three healthy daemons within 60 s");

  auto apply = [&](std::uint64_t version, const std::vector<v1::VmSpec>& vms) {
    return hub.run(
        [&](v1::CommandBody& b) {
          auto* m = b.mutable_apply()->mutable_manifest();
          m->set_version(version);
          for (const auto& s : vms) *m->add_vms() = s;
        },
        120s);
  };
  auto vmOp = [&](v1::VmCommand::Op op, const std::string& name, std::uint32_t timeoutS, const Hub::OnMessage& on,
                  Steady::time_point* t0) {
    return hub.run(
        [&](v1::CommandBody& b) {
          b.mutable_vm()->set_op(op);
          b.mutable_vm()->set_name(name);
          b.mutable_vm()->set_timeout_s(timeoutS);
        },
        60s, on, t0);
  };

  std::uint64_t version = 1;
  if (auto r = apply(version, {smallVm(f, vm, 128)}); !r || r->kind() != v1::CommandReply::SUCCEEDED)
    return fail("apply of the stopped VM: " + replyText(r));
  const long rssOne = vmRssKib(node.vmm.pid());

  // ---- trials, alternating between the node and bare libvirt, so both see the same machine load
  BareLibvirt baseline(f, bare, node / "bare.console.log");
  if (!baseline.problem().empty() || !baseline.watchNode(vm)) return fail("baseline: " + baseline.problem());
  PidFileWatch pids("/run/libvirt/qemu");  // libvirtd's run directory for qemu:///system
  if (!pids.problem().empty()) return fail(pids.problem());
  // Per trial, in ms. Node: publish -> running event at the hub (end to end), publish -> pid file (head),
  // STARTED on the bench's connection -> running event at the hub (tail). Bare: virDomainCreate ->
  // STARTED (end to end), virDomainCreate -> pid file (head).
  std::vector<double> viaNode, nodeHead, nodeTail, bareMs, bareHead;
  // libvirtd tears the last guest down (QEMU exit, cgroup and log clean-up) after destroy returns.
  auto settle = [] { std::this_thread::sleep_for(300ms); };
  auto bareTrial = [&]() -> bool {
    settle();
    pids.reset();
    auto b = baseline.startOnce();
    if (!b) return false;
    auto pid = pids.created(bare);
    if (!pid) return fail("baseline: no pid file for " + bare + " in /run/libvirt/qemu"), false;
    bareMs.push_back(ms(b->started - b->call));
    bareHead.push_back(ms(*pid - b->call));
    return true;
  };
  for (int i = 0; i < trials; ++i) {
    if (i % 2 == 1 && !bareTrial()) return fail("baseline: " + baseline.problem());
    settle();
    pids.reset();
    baseline.nodeWatch().reset();
    std::optional<Steady::time_point> running;
    auto watch = [&](const ctl::Message& m) {
      if (!running && isVmEvent(m, vm, "running")) running = m.receivedAt;
    };
    Steady::time_point t0;
    auto r = vmOp(v1::VmCommand::START, vm, 0, watch, &t0);
    if (!r || r->kind() != v1::CommandReply::SUCCEEDED) return fail("vm start: " + replyText(r));
    if (!running) {
      auto m = hub.waitFor([&](const ctl::Message& m) { return isVmEvent(m, vm, "running"); }, Steady::now() + 30s);
      if (!m) return fail("no vm.state running event within 30 s of the start reply");
      running = m->receivedAt;
    }
    auto pid = pids.created(vm);
    auto started = baseline.nodeWatch().waitStarted(5s);
    if (!pid || !started) return fail("no pid file or no STARTED event seen for " + vm);
    viaNode.push_back(ms(*running - t0));
    nodeHead.push_back(ms(*pid - t0));
    nodeTail.push_back(ms(*running - *started));
    // Stop: ACPI first, destroyed after 1 s (the guest may still be booting).
    auto s = vmOp(v1::VmCommand::STOP, vm, 1, {}, nullptr);
    if (!s || s->kind() != v1::CommandReply::SUCCEEDED) return fail("vm stop: " + replyText(s));

    if (i % 2 == 0 && !bareTrial()) return fail("baseline: " + baseline.problem());
  }

  // ---- vmm's memory with 10 defined, stopped VMs (the trial VM goes with this manifest)
  std::vector<v1::VmSpec> ten;
  for (const auto& r : rssVms) ten.push_back(smallVm(f, r, 64));
  if (auto r = apply(++version, ten); !r || r->kind() != v1::CommandReply::SUCCEEDED)
    return fail("apply of 10 VMs: " + replyText(r));
  // A list is answered after the apply's reconcile: vmm holds all ten.
  auto list = vmOp(v1::VmCommand::LIST, "", 0, {}, nullptr);
  if (!list || list->kind() != v1::CommandReply::SUCCEEDED) return fail("vm list: " + replyText(list));
  int held = 0;
  for (const auto& v : list->vm_list().vms())
    held += v.managed() && std::find(rssVms.begin(), rssVms.end(), v.name()) != rssVms.end();
  if (held != 10) return fail("vmm lists " + std::to_string(held) + " of the 10 VMs after their apply");
  long rss = vmRssKib(node.vmm.pid());
  std::string floorProblem;
  long floorKib = libvirtClientFloorKib(test::LibvirtFixture::kUri, floorProblem);
  if (floorKib < 0) return fail("libvirt client floor: " + floorProblem);

  // ---- clean up through the node: an empty manifest removes every VM it made.
  if (auto r = apply(++version, {}); !r || r->kind() != v1::CommandReply::SUCCEEDED)
    return fail("apply of the empty manifest: " + replyText(r));

  const double nodeMed = median(viaNode), bareMed = median(bareMs);
  const double head = median(nodeHead) - median(bareHead), tail = median(nodeTail);
  const double overhead = head + tail;
  std::printf("guest_start_vm: %d trials, tiny guest under TCG (direct kernel boot, 128 MiB, 1 vCPU)\n", trials);
  std::printf("  via the node (signed vm start published -> vm.state running event at the hub), ms: %s\n",
              fmtList(viaNode).c_str());
  std::printf("  bare libvirt (virDomainCreate call -> VIR_DOMAIN_EVENT_STARTED), ms:              %s\n",
              fmtList(bareMs).c_str());
  std::printf("  end to end: median via the node %.1f ms, bare %.1f ms (difference %.1f ms: libvirt's own spread)\n",
              nodeMed, bareMed, nodeMed - bareMed);
  std::printf("  head, to libvirtd's pid file: via the node %s; bare %s ms\n", fmtList(nodeHead).c_str(),
              fmtList(bareHead).c_str());
  std::printf("  tail, STARTED -> running event at the hub, ms: %s\n", fmtList(nodeTail).c_str());
  std::printf("  overhead: head %.1f ms (median %.1f - %.1f) + tail %.1f ms = %.1f ms\n", head, median(nodeHead),
              median(bareHead), tail, overhead);
  std::printf("  outrider-vmm VmRSS: %ld KiB with 1 defined VM (before the trials), %ld KiB with 10 defined, stopped VMs\n",
              rssOne, rss);
  std::printf("  a minimal libvirt client (connect, keepalive, lifecycle events, read all domains) VmRSS: %ld KiB;\n"
              "  vmm above it: %ld KiB\n",
              floorKib, rss - floorKib);
  result("vm_start_ms", nodeMed, "ms", bareMed, "report", true);
  result("vm_start_head_ms", median(nodeHead), "ms", median(bareHead), "report", true);
  result("vm_start_tail_ms", tail, "ms", 0, "report", true);
  result("vm_overhead_ms", overhead, "ms", 0, "<=50ms", overhead <= 50);
  result("vmm_rss_10_guests_kib", static_cast<double>(rss), "KiB", static_cast<double>(floorKib), "<=10240KiB",
         rss > 0 && rss <= 10240);
  result("vmm_rss_above_libvirt_client_kib", static_cast<double>(rss - floorKib), "KiB", 0, "report", true);
  return 0;
}
