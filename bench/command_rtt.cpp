// command_rtt: round trip of a signed ping through the broker to the real agent and back, next to the
// floor: a bare request/reply between two MQTT clients on the same broker, same TLS, same client code,
// measured in the same run. Also the agent's RSS and PSS while idle.
//
// Usage: bench_command_rtt [COUNT]   (default 5000)
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "outrider/common/crypto.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/ctl/command_client.hpp"
#include "outrider/ctl/hub_client.hpp"
#include "outrider/ctl/ping.hpp"
#include "support/mqtt_fixture.hpp"
#include "support/process.hpp"
#include "support/sandbox_config.hpp"

using namespace outrider;
using namespace std::chrono_literals;

namespace {

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto idx = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size()))) - 1;
  return v[std::min(idx, v.size() - 1)];
}

/// kB values of "Rss:" and "Pss:" from /proc/PID/smaps_rollup.
std::pair<long, long> rssPss(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string key;
  long value = 0, rss = -1, pss = -1;
  std::string unit;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    if (!(ls >> key >> value >> unit)) continue;
    if (key == "Rss:") rss = value;
    if (key == "Pss:") pss = value;
  }
  return {rss, pss};
}

/// User + system CPU time of a process in microseconds, from /proc/PID/stat.
double cpuMicros(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream ls(stat.substr(stat.rfind(')') + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && ls >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) * 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

ctl::HubOptions hubOptions(const test::Broker& b, const test::TestCa& ca, const test::CertPair& c) {
  ctl::HubOptions o;
  o.broker = *ctl::BrokerUrl::parse(b.url());
  o.cafile = ca.caFile().string();
  o.cert = c.cert.string();
  o.key = c.key.string();
  return o;
}

void result(const char* figure, double value, const char* unit, double baseline, const std::string& goal, bool pass) {
  if (baseline > 0)
    std::printf("RESULT command_rtt.%s value=%.1f unit=%s baseline=%.1f ratio=%.3f goal=%s %s\n", figure, value, unit,
                baseline, value / baseline, goal.c_str(), pass ? "PASS" : "FAIL");
  else
    std::printf("RESULT command_rtt.%s value=%.0f unit=%s baseline=- ratio=- goal=%s %s\n", figure, value, unit,
                goal.c_str(), pass ? "PASS" : "FAIL");
}

}  // namespace

int main(int argc, char** argv) {
  const std::uint64_t count = argc > 1 ? std::stoull(argv[1]) : 5000;
  test::TempDir dir{"bench-rtt"};
  test::TestCa ca{dir / "pki"};
  test::Broker broker{dir / "broker", ca};
  auto n1 = ca.issueClient("n1");
  auto n2 = ca.issueClient("n2");
  auto hubCert = ca.issueClient("hub");
  auto op = *crypto::SigningKey::generate();

  std::ofstream(dir / "agent.toml") << "[node]\nid = \"n1\"\nstate_dir = \"" << (dir / "state").string() << "\"\n"
                                    << "[hub]\nbrokers = [\"" << broker.url() << "\"]\ncafile = \""
                                    << ca.caFile().string() << "\"\ncertfile = \"" << n1.cert.string()
                                    << "\"\nkeyfile = \"" << n1.key.string() << "\"\n"
                                    << "[commands]\noperator_keys = [\"ed25519:" << crypto::base64(op.publicKey().raw())
                                    << "\"]\n[daemons]\nvmm_socket = \"" << (dir / "vmm.sock").string()
                                    << "\"\nnetd_socket = \"" << (dir / "netd.sock").string() << "\"\n"
                                    << "[log]\nlevel = \"warning\"\n" << test::agentSandboxConfig(dir.path());
  test::Process agent({test::binary("outrider-agent").string(), "--config", (dir / "agent.toml").string()},
                      dir / "agent.log");

  ctl::MosquittoLib lib;
  auto requester = ctl::HubClient::connect(hubOptions(broker, ca, hubCert), 10s);
  if (!requester) {
    std::fprintf(stderr, "bench: %s\n", requester.error().message.c_str());
    return 1;
  }

  // Floor: hub -> n2's cmd topic -> a plain client echoing on n2's reply topic -> hub.
  auto responder = ctl::HubClient::connect(hubOptions(broker, ca, n2), 10s);
  if (!responder || !(*responder)->subscribe(topics::cmd("n2"), 5s) ||
      !(*requester)->subscribe(topics::reply("n2"), 5s)) {
    std::fprintf(stderr, "bench: cannot set up the baseline clients\n");
    return 1;
  }
  std::atomic<bool> stop{false};
  std::thread echo([&] {
    while (!stop) {
      auto m = (*responder)->nextMessage(std::chrono::steady_clock::now() + 200ms);
      if (m) (void)(*responder)->publish(topics::reply("n2"), m->payload, false, 5s);
    }
  });
  // Same size as a signed ping envelope.
  auto sampleEnvelope = ctl::signEnvelope(ctl::makeCommandBody("n1", 10s, 1), op).SerializeAsString();
  std::vector<double> floorUs;
  floorUs.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    if (!(*requester)->publish(topics::cmd("n2"), sampleEnvelope, false, 5s)) break;
    auto m = (*requester)->nextMessage(t0 + 5s);
    if (!m) break;
    floorUs.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  stop = true;
  echo.join();
  (*requester)->clearMessages();

  // The agent: wait until it is online (status retained), then ping COUNT times.
  ctl::CommandClient client(**requester, op, 10s);
  std::vector<double> pingUs;
  pingUs.reserve(count);
  // Warm-up: the first ping also waits for the agent to connect.
  for (int i = 0; i < 50; ++i) {
    auto r = client.execute(ctl::makePing(client, "n1", 0));
    if (!r || !r->succeeded()) {
      if (i == 49) {
        std::fprintf(stderr, "bench: agent does not answer pings\n%s\n", agent.log().c_str());
        return 1;
      }
      std::this_thread::sleep_for(100ms);
    }
  }
  auto idle0 = rssPss(agent.pid());
  double cpu0 = cpuMicros(agent.pid());
  for (std::uint64_t i = 0; i < count; ++i) {
    auto r = client.execute(ctl::makePing(client, "n1", 0));
    if (!r || !r->succeeded()) {
      std::fprintf(stderr, "bench: ping %llu failed: %s\n", static_cast<unsigned long long>(i),
                   r ? r->failureText().c_str() : r.error().message.c_str());
      return 1;
    }
    pingUs.push_back(std::chrono::duration<double, std::micro>(r->rtt).count());
  }
  double agentCpuPerPing = (cpuMicros(agent.pid()) - cpu0) / static_cast<double>(count);
  // Idle again after the load: what the agent keeps.
  std::this_thread::sleep_for(2s);
  auto idle1 = rssPss(agent.pid());

  double fp50 = percentile(floorUs, 50), fp99 = percentile(floorUs, 99);
  double pp50 = percentile(pingUs, 50), pp99 = percentile(pingUs, 99);
  std::printf("command_rtt: %zu pings, %zu bare round trips over mutual TLS on a loopback Mosquitto\n", pingUs.size(),
              floorUs.size());
  std::printf("  bare request/reply  p50 %.1f us  p99 %.1f us\n", fp50, fp99);
  std::printf("  signed ping (agent) p50 %.1f us  p99 %.1f us\n", pp50, pp99);
  std::printf("  agent CPU per ping %.1f us (signature check, journal, decode, reply)\n", agentCpuPerPing);
  std::printf("  agent idle: before load RSS %ld KiB PSS %ld KiB; after %llu pings RSS %ld KiB PSS %ld KiB\n",
              idle0.first, idle0.second, static_cast<unsigned long long>(count), idle1.first, idle1.second);
  result("p50", pp50, "us", fp50, "ratio<=1.3", pp50 / fp50 <= 1.3);
  result("p99", pp99, "us", fp99, "ratio<=1.5", pp99 / fp99 <= 1.5);
  // Idle = connected, daemons polled, before the load; after the load the journal still holds every ping
  // until it expires, which is reported separately.
  result("agent_cpu_per_ping", agentCpuPerPing, "us", 0, "report", true);
  result("agent_idle_rss", static_cast<double>(idle0.first), "KiB", 0, "<=8192KiB", idle0.first <= 8192);
  result("agent_idle_pss", static_cast<double>(idle0.second), "KiB", 0, "report", true);
  result("agent_rss_after_load", static_cast<double>(idle1.first), "KiB", 0, "report", true);
  return 0;
}
