// tunnel_failover: outrider-netd with wireguard-go hubs in network namespaces (the test lab).
//  - failover: over TRIALS trials, the time from killing the active hub's wireguard-go to the first
//    successful ping through the next hub (median, max), next to the detection bound of the same run
//    (probe interval x miss threshold) as the baseline. The killed hub is restarted before the next
//    trial; all hubs share a tier, so there is no fail-back in between.
//  - tunnel_up: from tunnel_apply to the first ping through the new tunnel, next to the same steps done
//    by hand in the same run (wireguard-go started, `wg set`, address, link up, route) as the baseline.
//  - netd_rss: outrider-netd's VmRSS with one tunnel of three hubs up.
//
// Usage: bench_tunnel_failover [TRIALS]   (default 10)
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "outrider/common/ipc.hpp"
#include "support/netns_fixture.hpp"
#include "support/process.hpp"
#include "unit/test_ipc_support.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kService = "10.99.200.1";
constexpr int kProbeMs = 1000;
constexpr int kMisses = 3;

double secondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

/// One ping with a short timeout, so the first reply after a change is seen within ~0.1 s.
bool quickPing(NetnsLab& lab) {
  return run(lab.inEdge({"ping", "-n", "-q", "-c", "1", "-W", "0.1", kService}), lab.dir() / "bench-ping.log") == 0;
}

/// Seconds until a ping succeeds, or a negative number after `limit`.
double untilPing(NetnsLab& lab, Clock::time_point t0, double limit) {
  while (secondsSince(t0) < limit)
    if (quickPing(lab)) return secondsSince(t0);
  return -1;
}

class Api {
 public:
  explicit Api(const std::filesystem::path& socket) : client_(io_, socket) {}
  Result<v1::LocalReply> call(v1::LocalRequest req) { return callAndWait(io_, client_, std::move(req), 5s); }
  v1::TunnelStatus tunnel() {
    v1::LocalRequest req;
    req.mutable_tunnel_status();
    auto r = call(req);
    if (!r.ok() || r->tunnels().tunnels_size() == 0) return {};
    return r->tunnels().tunnels(0);
  }

 private:
  boost::asio::io_context io_;
  ipc::Client client_;
};

v1::TunnelSpec spec(NetnsLab& lab) {
  v1::TunnelSpec s;
  s.set_interface(lab.edgeIf());
  s.add_addresses("10.99.100.10/24");
  s.set_keepalive_s(1);
  s.set_probe_interval_ms(kProbeMs);
  s.set_miss_threshold(kMisses);
  s.set_holddown_s(30);
  s.set_standbys(1);
  for (int h = 1; h <= 3; ++h) {
    auto* p = s.add_hubs();
    p->set_name("hub" + std::to_string(h));
    p->set_endpoint(lab.hub(h).endpoint);
    p->set_public_key(lab.hub(h).publicKey);
    p->add_allowed_ips("10.99.200.0/24");
    p->set_tier(0);
    p->set_probe_address(lab.hub(h).probeAddress);
  }
  return s;
}

/// A "Name:  N kB" field of /proc/PID/status, in KiB, or -1.
long statusKiB(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  return -1;
}

/// The same tunnel set up by hand, as a script would: the floor for tunnel_up.
double manualTunnelUp(NetnsLab& lab) {
  std::string ifname = "om" + std::to_string(::getpid());
  auto t0 = Clock::now();
  Process wg(lab.inEdge({"wireguard-go", "-f", ifname}), lab.dir() / "manual-wg.log");
  if (!waitFor([&] { return lab.uapiOwner(ifname) > 0; }, 5s)) return -1;
  auto& hub = lab.hub(1);
  int rc = run({"wg", "set", ifname, "private-key", lab.edgeKeyFile().string(), "peer", hub.publicKey, "endpoint",
                hub.endpoint, "allowed-ips", "10.99.200.0/24"},
               lab.dir() / "manual.log");
  rc |= run(lab.inEdge({"ip", "addr", "add", "10.99.100.10/24", "dev", ifname}), lab.dir() / "manual.log");
  rc |= run(lab.inEdge({"ip", "link", "set", ifname, "up"}), lab.dir() / "manual.log");
  rc |= run(lab.inEdge({"ip", "route", "add", "10.99.200.0/24", "dev", ifname}), lab.dir() / "manual.log");
  double up = rc == 0 ? untilPing(lab, t0, 10) : -1;
  wg.stop();  // its tun device goes with it
  std::error_code ec;
  std::filesystem::remove(lab.uapiSocket(ifname), ec);
  return up;
}

void result(const char* figure, double value, const char* unit, double baseline, const std::string& goal, bool pass) {
  if (baseline > 0)
    std::printf("RESULT tunnel_failover.%s value=%.3f unit=%s baseline=%.3f ratio=%.3f goal=%s %s\n", figure, value, unit,
                baseline, value / baseline, goal.c_str(), pass ? "PASS" : "FAIL");
  else
    std::printf("RESULT tunnel_failover.%s value=%.3f unit=%s baseline=- ratio=- goal=%s %s\n", figure, value, unit,
                goal.c_str(), pass ? "PASS" : "FAIL");
}

}  // namespace

int main(int argc, char** argv) {
  int trials = argc > 1 ? std::max(1, std::atoi(argv[1])) : 10;
  try {
    NetnsLab lab(3);
    double manualUp = manualTunnelUp(lab);

    auto netd = lab.startNetd("", "netd.log");
    if (!waitFor([&] { return std::filesystem::exists(lab.netdSocket()) || !netd.running(); }, 10s)) {
      std::fprintf(stderr, "bench: outrider-netd did not start\n%s\n", netd.log().c_str());
      return 1;
    }
    Api api(lab.netdSocket());

    // Tunnel up: tunnel_apply -> first ping.
    v1::LocalRequest apply;
    *apply.mutable_tunnel_apply()->add_tunnels() = spec(lab);
    auto t0 = Clock::now();
    auto r = api.call(apply);
    if (!r.ok() || r->has_error()) {
      std::fprintf(stderr, "bench: tunnel_apply failed: %s\n",
                   r.ok() ? r->error().message().c_str() : r.error().message.c_str());
      return 1;
    }
    double up = untilPing(lab, t0, 10);
    if (up < 0) {
      std::fprintf(stderr, "bench: no ping through the new tunnel within 10 s\n%s\n", netd.log().c_str());
      return 1;
    }

    // Failover trials.
    std::vector<double> times;
    std::mt19937 rng(std::random_device{}());
    std::uniform_int_distribution<int> phase(0, kProbeMs - 1);
    for (int i = 0; i < trials; ++i) {
      // Ready: an active hub and a healthy warm standby.
      std::string active, standby;
      bool ready = waitFor(
          [&] {
            auto st = api.tunnel();
            active = st.active_hub();
            standby.clear();
            for (const auto& h : st.hubs())
              if (h.state() == "standby" && h.healthy() && h.misses() == 0) standby = h.name();
            return !active.empty() && !standby.empty();
          },
          60s);
      if (!ready || !quickPing(lab)) {
        std::fprintf(stderr, "bench: trial %d: tunnel not ready\n%s\n", i + 1, netd.log().c_str());
        return 1;
      }
      // A real hub fails at any moment, not just after a probe round (which is when the ready check above
      // tends to pass): wait a random part of the probe interval first.
      std::this_thread::sleep_for(std::chrono::milliseconds(phase(rng)));
      int idx = std::stoi(active.substr(3));
      auto kill = Clock::now();
      lab.killHub(idx);
      double t = untilPing(lab, kill, 30);
      if (t < 0) {
        std::fprintf(stderr, "bench: trial %d: no ping after killing %s\n%s\n", i + 1, active.c_str(), netd.log().c_str());
        return 1;
      }
      times.push_back(t);
      std::printf("  trial %2d: killed %s, traffic back via %s after %.3f s\n", i + 1, active.c_str(),
                  api.tunnel().active_hub().c_str(), t);
      if (!lab.startHub(idx)) {
        std::fprintf(stderr, "bench: could not restart %s\n", active.c_str());
        return 1;
      }
    }
    long rss = statusKiB(netd.pid(), "VmRSS");
    long rssAnon = statusKiB(netd.pid(), "RssAnon");
    long rssFile = statusKiB(netd.pid(), "RssFile");
    long pss = -1;
    {
      std::ifstream in("/proc/" + std::to_string(netd.pid()) + "/smaps_rollup");
      std::string line;
      while (std::getline(in, line))
        if (line.rfind("Pss:", 0) == 0) pss = std::stol(line.substr(4));
    }

    std::vector<double> sorted = times;
    std::sort(sorted.begin(), sorted.end());
    double median = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                      : (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]) / 2;
    double max = sorted.back();
    double bound = kProbeMs * kMisses / 1000.0;
    std::printf("tunnel_failover: %d trials, probe every %d ms, down after %d misses (detection bound %.1f s)\n",
                trials, kProbeMs, kMisses, bound);
    std::printf("  failover  median %.3f s  max %.3f s\n", median, max);
    std::printf("  tunnel up %.3f s (by hand in the same lab: %.3f s)\n", up, manualUp);
    std::printf("  outrider-netd VmRSS %ld KiB (anonymous %ld KiB, file-backed %ld KiB: code and shared libraries)\n",
                rss, rssAnon, rssFile);
    std::printf("  outrider-netd PSS %ld KiB (shared library pages split among the processes that map them)\n", pss);
    result("failover_median", median, "s", bound, "<=3.5s", median <= 3.5);
    result("failover_max", max, "s", bound, "<=5s", max <= 5.0);
    result("tunnel_up", up, "s", manualUp, "<=1s", up <= 1.0);
    result("netd_rss", static_cast<double>(rss) / 1024.0, "MiB", 0, "<=6MiB", rss >= 0 && rss <= 6 * 1024);
    result("netd_pss", static_cast<double>(pss) / 1024.0, "MiB", 0, "report", true);
    result("netd_rss_anon", static_cast<double>(rssAnon) / 1024.0, "MiB", 0, "report", true);
    netd.stop();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
