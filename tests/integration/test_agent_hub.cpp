// End to end against the real components: a Mosquitto broker with mutual TLS and an ACL, the real
// outrider-agent, outrider-vmm and outrider-netd binaries, and outriderctl, all started here.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <csignal>
#include <fstream>

#include "outrider/common/crypto.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/v1/hub.pb.h"
#include "support/commands.hpp"
#include "support/mqtt_fixture.hpp"
#include "support/process.hpp"
#include "support/sandbox_config.hpp"

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;
using Reply = outrider::v1::CommandReply;

namespace {

MosquittoLib g_mosquitto;

std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A node (agent + vmm + netd) on a real broker, and a hub-side client watching its topics.
struct Node {
  TempDir dir{"node"};
  TestCa ca{dir / "pki"};
  Broker broker{dir / "broker", ca};
  CertPair n1 = ca.issueClient("n1");
  CertPair hubCert = ca.issueClient("hub");
  crypto::SigningKey op = *crypto::SigningKey::generate();
  std::filesystem::path opKey = dir / "operator.key";
  Process vmm, netd, agent;
  int agentStarts = 0;
  MqttClient hub{g_mosquitto, MqttClientOptions{.caFile = ca.caFile(), .cert = hubCert}};

  explicit Node(std::vector<std::string> brokers = {}, bool startAgent = true) {
    REQUIRE(op.saveFile(opKey).ok());
    if (brokers.empty()) brokers = {broker.url()};
    writeConfigs(brokers);
    vmm = Process({binary("outrider-vmm").string(), "--config", (dir / "vmm.toml").string()}, dir / "vmm.log");
    netd = Process({binary("outrider-netd").string(), "--config", (dir / "netd.toml").string()}, dir / "netd.log");
    REQUIRE(hub.connect("127.0.0.1", broker.port()));
    REQUIRE(hub.subscribe(topics::status("n1")));
    REQUIRE(hub.subscribe(topics::reply("n1")));
    if (startAgent) startAgentProcess();
  }

  void writeConfigs(const std::vector<std::string>& brokers) {
    std::string list;
    for (const auto& b : brokers) list += (list.empty() ? "\"" : ", \"") + b + "\"";
    std::ofstream(dir / "agent.toml") << "[node]\nid = \"n1\"\nstate_dir = \"" << (dir / "state").string() << "\"\n"
                                      << "[hub]\nbrokers = [" << list << "]\n"
                                      << "cafile = \"" << ca.caFile().string() << "\"\n"
                                      << "certfile = \"" << n1.cert.string() << "\"\n"
                                      << "keyfile = \"" << n1.key.string() << "\"\n"
                                      << "backoff_initial_ms = 100\nbackoff_max_s = 2\nconnect_timeout_s = 3\n"
                                      << "[commands]\noperator_keys = [\"ed25519:" << crypto::base64(op.publicKey().raw())
                                      << "\"]\n"
                                      << "[daemons]\nvmm_socket = \"" << (dir / "vmm.sock").string() << "\"\n"
                                      << "netd_socket = \"" << (dir / "netd.sock").string() << "\"\n"
                                      << "health_interval_s = 1\n"
                                      << agentSandboxConfig(dir.path());
    std::ofstream(dir / "vmm.toml") << "[api]\nsocket = \"" << (dir / "vmm.sock").string() << "\"\ngroup = \"\"\n"
                                    << vmmSandboxConfig(dir.path());
    std::ofstream(dir / "netd.toml") << "[api]\nsocket = \"" << (dir / "netd.sock").string() << "\"\ngroup = \"\"\n"
                                     << netdSandboxConfig(dir.path());
  }

  void startAgentProcess() {
    ++agentStarts;
    agent = Process({binary("outrider-agent").string(), "--config", (dir / "agent.toml").string()}, dir / "agent.log");
  }

  /// Statuses received so far, in order.
  std::vector<outrider::v1::NodeStatus> statuses() const {
    std::vector<outrider::v1::NodeStatus> out;
    for (const auto& m : hub.received())
      if (m.topic == topics::status("n1")) {
        outrider::v1::NodeStatus s;
        if (s.ParseFromString(m.payload)) out.push_back(s);
      }
    return out;
  }
  bool waitStatus(const std::function<bool(const outrider::v1::NodeStatus&)>& pred, std::chrono::milliseconds t = 15s,
                  std::size_t from = 0) {
    return waitFor(
        [&] {
          auto all = statuses();
          for (std::size_t i = from; i < all.size(); ++i)
            if (pred(all[i])) return true;
          return false;
        },
        t);
  }
  bool waitOnline(std::chrono::milliseconds t = 15s, std::size_t from = 0) {
    return waitStatus([](const auto& s) { return s.online(); }, t, from);
  }

  std::vector<Reply> replies() const {
    std::vector<Reply> out;
    for (const auto& m : hub.received())
      if (m.topic == topics::reply("n1")) {
        Reply r;
        if (r.ParseFromString(m.payload)) out.push_back(r);
      }
    return out;
  }
  std::vector<Reply> repliesFor(const std::string& id) const {
    std::vector<Reply> out;
    for (auto& r : replies())
      if (r.command_id() == id) out.push_back(r);
    return out;
  }
  /// Publish a raw payload on n1's command topic as the hub.
  void send(const std::string& payload) { REQUIRE(hub.publish(topics::cmd("n1"), payload)); }
  /// Wait for a final reply (succeeded, failed, rejected) for `id`.
  std::optional<Reply> waitFinal(const std::string& id, std::chrono::milliseconds t = 10s) {
    std::optional<Reply> out;
    waitFor(
        [&] {
          for (auto& r : repliesFor(id))
            if (r.kind() == Reply::SUCCEEDED || r.kind() == Reply::FAILED || r.kind() == Reply::REJECTED) {
              out = r;
              return true;
            }
          return false;
        },
        t);
    return out;
  }
  /// Run outriderctl as the hub; returns exit code and output.
  std::pair<int, std::string> ctl(std::vector<std::string> args) {
    std::vector<std::string> argv{binary("outriderctl").string(), "--broker", broker.url(), "--cafile",
                                  ca.caFile().string(),           "--cert",   hubCert.cert.string(),
                                  "--key",                        hubCert.key.string(),
                                  "--sign-key",                   opKey.string(),
                                  "--timeout",                    "10"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto log = dir / ("ctl-" + std::to_string(++ctlRuns) + ".log");
    int rc = run(argv, log);
    return {rc, slurp(log)};
  }
  int ctlRuns = 0;
};

std::string diag(Node& n) { return "agent log:\n" + n.agent.log() + "\nbroker log:\n" + n.broker.log(); }

}  // namespace

TEST_CASE("the node comes online; outriderctl ping, status and nodes work end to end") {
  Node n;
  REQUIRE_MESSAGE(n.waitOnline(), diag(n));
  // The daemons' health reaches the retained status.
  REQUIRE_MESSAGE(n.waitStatus([](const auto& s) {
    int healthy = 0;
    for (const auto& d : s.daemons()) healthy += d.state() == outrider::v1::DaemonHealth::HEALTHY;
    return s.online() && healthy == 3;
  }),
                  diag(n));

  auto [rc, out] = n.ctl({"ping", "n1"});
  CHECK_MESSAGE(rc == 0, out, diag(n));
  CHECK_MESSAGE(out.find("pong from n1") != std::string::npos, out);

  auto [rc2, status] = n.ctl({"status", "n1"});
  CHECK_MESSAGE(rc2 == 0, status);
  CHECK(status.find("online") != std::string::npos);
  for (const char* d : {"agent", "vmm", "netd"}) CHECK_MESSAGE(status.find(d) != std::string::npos, status);
  CHECK(status.find("0.1.0") != std::string::npos);

  auto [rc3, nodes] = n.ctl({"nodes"});
  CHECK_MESSAGE(rc3 == 0, nodes);
  CHECK(nodes.find("n1") != std::string::npos);

  auto [rc4, held] = n.ctl({"ping", "n1", "--hold", "1500"});
  CHECK_MESSAGE(rc4 == 0, held);
  auto progress = 0;
  for (auto& r : n.replies()) progress += r.kind() == Reply::PROGRESS;
  CHECK(progress >= 1);

  // A daemon that goes away shows in the status: stop vmm.
  n.vmm.stop();
  CHECK_MESSAGE(n.waitStatus([](const auto& s) {
    for (const auto& d : s.daemons())
      if (d.name() == "vmm") return d.state() == outrider::v1::DaemonHealth::UNREACHABLE;
    return false;
  }),
                diag(n));
}

TEST_CASE("bad commands are each rejected with the right reason, and the next good one still runs") {
  Node n;
  REQUIRE_MESSAGE(n.waitOnline(), diag(n));
  auto stranger = *crypto::SigningKey::generate();
  auto now = nowMs();

  struct Case {
    std::string name;
    std::string payload;
    Reply::RejectReason reason;
  };
  std::vector<Case> cases;
  {
    outrider::v1::CommandEnvelope e;
    REQUIRE(e.ParseFromString(seal(pingBody(now, "bad-sig"), n.op)));
    auto sig = e.signature();
    sig[0] ^= 0x40;
    e.set_signature(sig);
    cases.push_back({"wrong signature", e.SerializeAsString(), Reply::BAD_SIGNATURE});
  }
  cases.push_back({"unknown key", seal(pingBody(now, "bad-key"), stranger), Reply::UNKNOWN_KEY});
  cases.push_back({"another node's id", seal(pingBody(now, "bad-node", "n2"), n.op), Reply::WRONG_NODE});
  {
    auto b = pingBody(now - 7200'000, "bad-expired");
    cases.push_back({"expired", seal(b, n.op), Reply::EXPIRED});
  }
  cases.push_back({"dated an hour ahead", seal(pingBody(now + 3600'000, "bad-future"), n.op), Reply::NOT_YET_VALID});
  {
    std::string junk(1 << 20, '\0');
    std::uint64_t x = 0x9E3779B97F4A7C15ull;
    for (auto& c : junk) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      c = static_cast<char>(x);
    }
    cases.push_back({"1 MiB of random bytes", junk, Reply::OVERSIZED});
  }
  {
    auto p = seal(pingBody(now, "bad-trunc"), n.op);
    cases.push_back({"truncated protobuf", p.substr(0, p.size() - 7), Reply::MALFORMED});
  }
  cases.push_back({"empty payload", "", Reply::MALFORMED});

  // A good command first, so its id can then be replayed with another body.
  n.send(seal(pingBody(now, "good-0"), n.op));
  REQUIRE(n.waitFinal("good-0"));
  {
    auto b = pingBody(now, "good-0");
    b.mutable_ping()->set_payload("other body, same id");
    cases.push_back({"replayed id", seal(b, n.op), Reply::REPLAYED});
  }

  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto before = n.replies().size();
    n.send(c.payload);
    std::optional<Reply> got;
    REQUIRE_MESSAGE(waitFor(
                        [&] {
                          auto rs = n.replies();
                          for (auto i = before; i < rs.size(); ++i)
                            if (rs[i].kind() == Reply::REJECTED) {
                              got = rs[i];
                              return true;
                            }
                          return false;
                        },
                        10s),
                    diag(n));
    CHECK(Reply::RejectReason_Name(got->reason()) == Reply::RejectReason_Name(c.reason));
    CHECK_FALSE(got->message().empty());
    // The agent is still there and answers the next good command.
    auto id = "after-" + std::to_string(&c - cases.data());
    n.send(seal(pingBody(nowMs(), id), n.op));
    auto r = n.waitFinal(id);
    REQUIRE_MESSAGE(r, diag(n));
    CHECK(r->kind() == Reply::SUCCEEDED);
  }
  CHECK(n.agent.running());
}

TEST_CASE("a redelivered command runs once, also across an agent crash") {
  Node n;
  REQUIRE_MESSAGE(n.waitOnline(), diag(n));
  auto env = seal(pingBody(nowMs(), "once-1"), n.op);
  n.send(env);
  REQUIRE(n.waitFinal("once-1"));
  n.send(env);  // as a QoS 1 redelivery would
  REQUIRE(waitFor([&] { return n.repliesFor("once-1").size() >= 2; }, 10s));
  auto rs = n.repliesFor("once-1");
  REQUIRE(rs.size() == 2);
  // The second answer is the recorded one, byte for byte (same at_ms: it was not run again).
  CHECK(rs[1].kind() == Reply::SUCCEEDED);
  CHECK(rs[1].SerializeAsString() == rs[0].SerializeAsString());

  // kill -9: the will marks the node offline; after a restart the journal still answers the redelivery.
  auto seen = n.statuses().size();
  n.agent.signal(SIGKILL);
  n.agent.wait(5s);
  CHECK_MESSAGE(n.waitStatus([](const auto& s) { return !s.online(); }, 60s, seen), diag(n));
  seen = n.statuses().size();
  n.startAgentProcess();
  REQUIRE_MESSAGE(n.waitOnline(15s, seen), diag(n));
  n.hub.clearReceived();
  n.send(env);
  REQUIRE(waitFor([&] { return !n.repliesFor("once-1").empty(); }, 10s));
  auto again = n.repliesFor("once-1");
  CHECK(again.size() == 1);
  CHECK(again[0].kind() == Reply::SUCCEEDED);
}

TEST_CASE("broker stopped and restarted: status goes offline, then the agent comes back online by itself") {
  Node n;
  REQUIRE_MESSAGE(n.waitOnline(), diag(n));
  auto seen = n.statuses().size();
  n.broker.stop();
  // Let the agent fail a few reconnects, so its backoff grows, then bring the broker back on the same port.
  REQUIRE(waitFor([&] { return n.agent.log().find("next attempt") != std::string::npos; }, 10s));
  n.broker.restart();
  REQUIRE(n.hub.waitConnectCount(2, 15s));
  // Offline arrives live (Mosquitto sends wills when it shuts down) and online follows once the agent is back.
  CHECK_MESSAGE(n.waitStatus([](const auto& s) { return !s.online(); }, 15s, seen), diag(n));
  std::size_t offlineAt = 0;
  auto all = n.statuses();
  for (std::size_t i = seen; i < all.size(); ++i)
    if (!all[i].online()) {
      offlineAt = i;
      break;
    }
  REQUIRE_MESSAGE(n.waitOnline(20s, offlineAt + 1), diag(n));
  // And commands work again.
  n.send(seal(pingBody(nowMs(), "after-restart"), n.op));
  auto r = n.waitFinal("after-restart");
  REQUIRE_MESSAGE(r, diag(n));
  CHECK(r->kind() == Reply::SUCCEEDED);
}

TEST_CASE("two hubs in the list, the first dead: the agent uses the second") {
  int dead = freeLoopbackPort();
  TempDir scratch{"dead"};
  Node n({"mqtts://127.0.0.1:" + std::to_string(dead), ""}, false);
  // The second entry is the live broker.
  n.writeConfigs({"mqtts://127.0.0.1:" + std::to_string(dead), n.broker.url()});
  n.startAgentProcess();
  REQUIRE_MESSAGE(n.waitOnline(), diag(n));
  auto s = n.statuses();
  CHECK(s.back().broker() == n.broker.url());
  n.send(seal(pingBody(nowMs(), "second-hub"), n.op));
  auto r = n.waitFinal("second-hub");
  REQUIRE(r);
  CHECK(r->kind() == Reply::SUCCEEDED);
}

TEST_CASE("a config with a typo'd key or a wrong type fails start-up naming file, line and key") {
  TempDir dir{"cfg"};
  auto cfg = dir / "agent.toml";
  auto check = [&](const std::string& text, const std::string& line, const std::string& key) {
    std::ofstream(cfg) << text;
    Process p({binary("outrider-agent").string(), "--config", cfg.string()}, dir / "agent.log");
    auto st = p.wait(10s);
    REQUIRE(st);
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 2);
    auto log = p.log();
    CHECK_MESSAGE(log.find(cfg.string() + ":" + line) != std::string::npos, log);
    CHECK_MESSAGE(log.find(key) != std::string::npos, log);
  };
  std::string base =
      "[node]\nid = \"n1\"\n[hub]\nbrokers = [\"mqtts://127.0.0.1:1\"]\ncafile = \"a\"\ncertfile = \"b\"\nkeyfile = \"c\"\n"
      "[commands]\noperator_keys = [\"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n";
  check(base + "[daemons]\nhealth_intervall_s = 5\n", "11", "daemons.health_intervall_s");
  check(base + "[daemons]\nhealth_interval_s = \"5\"\n", "11", "daemons.health_interval_s");
}
