// The real outriderctl binary against a real Mosquitto (mutual TLS + ACL) and a scripted node: a test
// client with n1's certificate that checks each command envelope like a node would and replies.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/v1/hub.pb.h"
#include "support/mqtt_fixture.hpp"
#include "support/process.hpp"

extern char** environ;

using namespace outrider;
using namespace outrider::test;
using namespace std::chrono_literals;

namespace {

const MosquittoLib kMosquitto;

std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct CtlRun {
  int exit = -1;
  std::string out;
  std::string err;
  std::chrono::milliseconds elapsed{0};
};

// Run the built outriderctl with stdout and stderr captured apart, in an environment without OUTRIDER_*
// variables and with HOME in the test's directory (so no operator's ctl.toml leaks in).
CtlRun runCtl(const TempDir& tmp, std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  static std::atomic<int> seq{0};
  const int n = seq++;
  const auto outFile = tmp / ("ctl-" + std::to_string(n) + ".out");
  const auto errFile = tmp / ("ctl-" + std::to_string(n) + ".err");
  std::vector<std::string> argv{binary("outriderctl").string()};
  argv.insert(argv.end(), args.begin(), args.end());

  std::vector<std::string> envStore;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    if (kv.rfind("OUTRIDER_", 0) == 0 || kv.rfind("HOME=", 0) == 0) continue;
    envStore.push_back(kv);
  }
  envStore.push_back("HOME=" + tmp.path().string());
  for (auto& [k, v] : env) envStore.push_back(k + "=" + v);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, outFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, errFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> cargs, cenv;
  for (auto& a : argv) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  for (auto& e : envStore) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  CtlRun r;
  pid_t pid = -1;
  const auto start = std::chrono::steady_clock::now();
  int rc = ::posix_spawn(&pid, cargs[0], &fa, nullptr, cargs.data(), cenv.data());
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  int status = 0;
  // outriderctl bounds itself by --timeout; the tests pass 2-3 s. Guard against a hang anyway.
  bool exited = waitFor([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 30s);
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("outriderctl did not exit within 30 s");
  }
  r.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  r.exit = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(outFile);
  r.err = slurp(errFile);
  return r;
}

std::string describe(const CtlRun& r) {
  return "exit " + std::to_string(r.exit) + "\n--- stdout\n" + r.out + "--- stderr\n" + r.err;
}

bool oneLineReason(const CtlRun& r) {
  return r.err.rfind("outriderctl: ", 0) == 0 && std::count(r.err.begin(), r.err.end(), '\n') == 1 &&
         r.err.back() == '\n';
}

v1::NodeStatus sampleStatus() {
  v1::NodeStatus s;
  s.set_node_id("n1");
  s.set_online(true);
  s.set_version("0.1.0-test");
  s.set_at_ms(nowMs() - 2'000);
  s.set_uptime_s(3725);
  s.set_broker("mqtts://127.0.0.1:8883");
  s.set_hostname("edge-test");
  s.set_arch("x86_64");
  auto* a = s.add_daemons();
  a->set_name("agent");
  a->set_state(v1::DaemonHealth::HEALTHY);
  a->set_version("0.1.0-test");
  a->set_uptime_s(3725);
  auto* n = s.add_daemons();
  n->set_name("netd");
  n->set_state(v1::DaemonHealth::UNREACHABLE);
  n->set_detail("socket gone");
  return s;
}

// A scripted node: checks every envelope on its cmd topic against the trusted operator key and answers
// ACCEPTED, PROGRESS, SUCCEEDED (Pong), or REJECTED BAD_SIGNATURE, or FAILED for hold_ms == 4242.
class Responder {
 public:
  Responder(const std::filesystem::path& caFile, const CertPair& cert, std::string node, crypto::VerifyKey trusted)
      : node_(std::move(node)), trusted_(std::move(trusted)),
        client_(kMosquitto, MqttClientOptions{.caFile = caFile, .cert = cert}) {}
  ~Responder() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  void start(int port) {
    REQUIRE_MESSAGE(client_.connect("127.0.0.1", port), client_.lastError());
    REQUIRE(client_.subscribe(topics::cmd(node_)));
    thread_ = std::thread([this] { loop(); });
  }

  std::vector<v1::CommandBody> bodies() const {
    std::lock_guard lock(mu_);
    return bodies_;
  }
  std::vector<std::string> keyIds() const {
    std::lock_guard lock(mu_);
    return keyIds_;
  }

 private:
  void loop() {
    std::size_t handled = 0;
    while (!stop_) {
      waitFor([&] { return stop_ || client_.received().size() > handled; }, 200ms);
      auto msgs = client_.received();
      for (; handled < msgs.size(); ++handled)
        if (msgs[handled].topic == topics::cmd(node_)) handle(msgs[handled].payload);
    }
  }

  void reply(v1::CommandReply r) {
    r.set_node_id(node_);
    r.set_at_ms(nowMs());
    client_.publish(topics::reply(node_), r.SerializeAsString());
  }

  void handle(const std::string& payload) {
    v1::CommandEnvelope env;
    v1::CommandBody body;
    v1::CommandReply r;
    if (!env.ParseFromString(payload) || !body.ParseFromString(env.body())) {
      r.set_kind(v1::CommandReply::REJECTED);
      r.set_reason(v1::CommandReply::MALFORMED);
      r.set_message("cannot decode");
      return reply(r);
    }
    {
      std::lock_guard lock(mu_);
      bodies_.push_back(body);
      keyIds_.push_back(env.key_id());
    }
    r.set_command_id(body.command_id());
    if (!trusted_.verify(env.body(), env.signature())) {
      r.set_kind(v1::CommandReply::REJECTED);
      r.set_reason(v1::CommandReply::BAD_SIGNATURE);
      r.set_message("signature does not verify with key " + env.key_id());
      return reply(r);
    }
    r.set_kind(v1::CommandReply::ACCEPTED);
    r.set_seq(0);
    reply(r);
    if (body.ping().hold_ms() == 4242) {
      r.set_kind(v1::CommandReply::FAILED);
      r.set_seq(1);
      r.set_message("hold refused by test node");
      return reply(r);
    }
    r.set_kind(v1::CommandReply::PROGRESS);
    r.set_seq(1);
    r.set_progress_pct(50);
    r.set_message("holding");
    reply(r);
    r.set_kind(v1::CommandReply::SUCCEEDED);
    r.set_seq(2);
    r.set_progress_pct(100);
    r.clear_message();
    r.mutable_pong()->set_version("9.9.9-test");
    r.mutable_pong()->set_node_time_ms(nowMs());
    r.mutable_pong()->set_uptime_s(42);
    reply(r);
  }

  std::string node_;
  crypto::VerifyKey trusted_;
  MqttClient client_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<v1::CommandBody> bodies_;
  std::vector<std::string> keyIds_;
};

struct Env {
  TempDir tmp{"ctl-it"};
  TestCa ca{tmp / "pki"};
  Broker broker{tmp / "broker", ca};
  CertPair hubCert = ca.issueClient("hub");
  CertPair n1Cert = ca.issueClient("n1");
  std::filesystem::path opKey = tmp / "operator.key";
  crypto::SigningKey op = makeKey(opKey);

  static crypto::SigningKey makeKey(const std::filesystem::path& path) {
    auto k = crypto::SigningKey::generate();
    REQUIRE(k.ok());
    REQUIRE(k->saveFile(path).ok());
    return *k;
  }

  /// The connection flags for the hub user, plus `args`.
  std::vector<std::string> hubArgs(std::vector<std::string> args, std::string timeout = "2") const {
    std::vector<std::string> all{"--broker",       broker.url(),           "--cafile", ca.caFile().string(),
                                 "--cert",         hubCert.cert.string(),  "--key",    hubCert.key.string(),
                                 "--timeout",      timeout};
    all.insert(all.end(), args.begin(), args.end());
    return all;
  }

  void publishStatusAsN1(const v1::NodeStatus& s) {
    MqttClient n1(kMosquitto, MqttClientOptions{.caFile = ca.caFile(), .cert = n1Cert});
    REQUIRE_MESSAGE(n1.connect("127.0.0.1", broker.port()), n1.lastError());
    REQUIRE(n1.publish(topics::status("n1"), s.SerializeAsString(), 1, true));
  }
};

}  // namespace

TEST_CASE_FIXTURE(Env, "nodes on an empty fleet prints the header only") {
  auto r = runCtl(tmp, hubArgs({"nodes"}));
  REQUIRE_MESSAGE(r.exit == 0, describe(r));
  CHECK(r.out == "NODE  STATE  VERSION  BROKER  SEEN  DAEMONS\n");
  CHECK(r.err.empty());
  auto j = runCtl(tmp, hubArgs({"nodes", "--json"}));
  REQUIRE_MESSAGE(j.exit == 0, describe(j));
  CHECK(j.out == "[]\n");
}

TEST_CASE_FIXTURE(Env, "nodes and status show the retained status a node published") {
  publishStatusAsN1(sampleStatus());

  auto r = runCtl(tmp, hubArgs({"nodes"}));
  REQUIRE_MESSAGE(r.exit == 0, describe(r));
  CHECK(r.out.rfind("NODE  STATE   VERSION     BROKER", 0) == 0);
  CHECK(std::regex_search(r.out, std::regex(R"(\nn1 +online +0\.1\.0-test +mqtts://127\.0\.0\.1:8883 +[23]s ago +agent:ok netd:down\n)")));
  CHECK(r.elapsed < 2s);  // ends ~300 ms after the retained burst, not at the timeout

  auto j = runCtl(tmp, hubArgs({"--json", "nodes"}));
  REQUIRE_MESSAGE(j.exit == 0, describe(j));
  CHECK(j.out.rfind("[{\"node\":\"n1\",\"state\":\"online\",\"online\":true,\"version\":\"0.1.0-test\"", 0) == 0);

  auto s = runCtl(tmp, hubArgs({"status", "n1"}));
  REQUIRE_MESSAGE(s.exit == 0, describe(s));
  CHECK(s.out.find("node:           n1\n") != std::string::npos);
  CHECK(s.out.find("state:          online\n") != std::string::npos);
  CHECK(s.out.find("hostname:       edge-test\n") != std::string::npos);
  CHECK(s.out.find("uptime:         1h 2m\n") != std::string::npos);
  CHECK(s.out.find("NAME   STATE        VERSION     UPTIME  DETAIL\n") != std::string::npos);
  CHECK(s.out.find("netd   unreachable  -           -       socket gone\n") != std::string::npos);

  auto sj = runCtl(tmp, hubArgs({"status", "n1", "--json"}));
  REQUIRE_MESSAGE(sj.exit == 0, describe(sj));
  CHECK(sj.out.rfind("{\"node\":\"n1\",\"state\":\"online\"", 0) == 0);
  CHECK(sj.out.find("\"hostname\":\"edge-test\"") != std::string::npos);

  // An offline status (as the last will would set it) replaces the retained one.
  auto off = sampleStatus();
  off.set_online(false);
  publishStatusAsN1(off);
  auto r2 = runCtl(tmp, hubArgs({"nodes"}));
  REQUIRE_MESSAGE(r2.exit == 0, describe(r2));
  CHECK(std::regex_search(r2.out, std::regex(R"(\nn1 +offline )")));
}

TEST_CASE_FIXTURE(Env, "status of a node without a retained status fails after the timeout") {
  auto r = runCtl(tmp, hubArgs({"status", "nX"}));
  CHECK_MESSAGE(r.exit == 1, describe(r));
  CHECK(r.err == "outriderctl: no status for node nX\n");
  CHECK(r.out.empty());
  CHECK(r.elapsed >= 1900ms);
  CHECK(r.elapsed < 5s);
}

TEST_CASE_FIXTURE(Env, "ping gets accepted, progress and a pong from a node that checks the signature") {
  Responder n1(ca.caFile(), n1Cert, "n1", op.publicKey());
  n1.start(broker.port());

  // The signing key comes from the environment here, the rest from flags.
  auto r = runCtl(tmp, hubArgs({"ping", "n1", "--hold", "100"}, "3"), {{"OUTRIDER_SIGN_KEY", opKey.string()}});
  REQUIRE_MESSAGE(r.exit == 0, describe(r));
  CHECK(r.err.empty());
  CHECK(r.out.find("accepted by n1\n") != std::string::npos);
  CHECK(r.out.find("progress 50%: holding\n") != std::string::npos);
  CHECK(std::regex_search(r.out, std::regex(R"(pong from n1: version 9\.9\.9-test, rtt \d+\.\d\d ms\n$)")));

  auto bodies = n1.bodies();
  REQUIRE(bodies.size() == 1);
  const auto& b = bodies[0];
  CHECK(b.node_id() == "n1");
  CHECK(std::regex_match(b.command_id(), std::regex("ctl-[0-9a-f]{16}")));
  CHECK(b.expires_at_ms() - b.issued_at_ms() == 3000);
  CHECK(b.deadline_ms() == 3000);
  CHECK(std::abs(b.issued_at_ms() - nowMs()) < 10'000);
  CHECK(b.has_ping());
  CHECK(b.ping().hold_ms() == 100);
  CHECK(n1.keyIds().at(0) == op.publicKey().id());

  auto j = runCtl(tmp, hubArgs({"ping", "n1", "--json", "--sign-key", opKey.string()}, "3"));
  REQUIRE_MESSAGE(j.exit == 0, describe(j));
  CHECK(j.out.rfind("{\"node\":\"n1\",\"command_id\":\"ctl-", 0) == 0);
  CHECK(j.out.find("\"version\":\"9.9.9-test\"") != std::string::npos);
  CHECK(j.out.find("accepted") == std::string::npos);  // no progress lines in JSON

  auto many = runCtl(tmp, hubArgs({"ping", "n1", "--count", "5", "--sign-key", opKey.string()}, "3"));
  REQUIRE_MESSAGE(many.exit == 0, describe(many));
  CHECK(many.out.find("sent 5, ok 5\n") != std::string::npos);
  CHECK(std::regex_search(many.out, std::regex(R"(rtt ms: min [\d.]+  p50 [\d.]+  p90 [\d.]+  p99 [\d.]+  max [\d.]+)")));
  auto manyJson = runCtl(tmp, hubArgs({"ping", "n1", "--count", "3", "--json", "--sign-key", opKey.string()}, "3"));
  REQUIRE_MESSAGE(manyJson.exit == 0, describe(manyJson));
  CHECK(manyJson.out.rfind("{\"sent\":3,\"ok\":3,\"min_ms\":", 0) == 0);

  // Every command had its own id.
  auto all = n1.bodies();
  CHECK(all.size() == 1 + 1 + 5 + 3);
  std::set<std::string> ids;
  for (const auto& body : all) ids.insert(body.command_id());
  CHECK(ids.size() == all.size());
}

TEST_CASE_FIXTURE(Env, "a FAILED reply exits 1 with the node's message") {
  Responder n1(ca.caFile(), n1Cert, "n1", op.publicKey());
  n1.start(broker.port());
  auto r = runCtl(tmp, hubArgs({"ping", "n1", "--hold", "4242", "--sign-key", opKey.string()}, "3"));
  CHECK_MESSAGE(r.exit == 1, describe(r));
  CHECK(r.err == "outriderctl: failed: hold refused by test node\n");
}

TEST_CASE_FIXTURE(Env, "a ping signed with an untrusted key is rejected") {
  Responder n1(ca.caFile(), n1Cert, "n1", op.publicKey());
  n1.start(broker.port());
  auto stranger = tmp / "stranger.key";
  makeKey(stranger);
  auto r = runCtl(tmp, hubArgs({"ping", "n1", "--sign-key", stranger.string()}, "3"));
  CHECK_MESSAGE(r.exit == 1, describe(r));
  CHECK(oneLineReason(r));
  CHECK(r.err.rfind("outriderctl: rejected: BAD_SIGNATURE: ", 0) == 0);
}

TEST_CASE_FIXTURE(Env, "a ping nobody answers times out within --timeout") {
  auto r = runCtl(tmp, hubArgs({"ping", "n2", "--sign-key", opKey.string()}, "2"));
  CHECK_MESSAGE(r.exit == 1, describe(r));
  CHECK(r.err == "outriderctl: timeout: no reply from n2 after 2s\n");
  CHECK(r.elapsed >= 1900ms);
  CHECK(r.elapsed < 5s);
}

TEST_CASE_FIXTURE(Env, "connection failures give one clear line") {
  SUBCASE("nothing listening") {
    const int port = freeLoopbackPort();
    auto r = runCtl(tmp, {"--broker", "mqtts://127.0.0.1:" + std::to_string(port), "--cafile", ca.caFile().string(),
                          "--cert", hubCert.cert.string(), "--key", hubCert.key.string(), "--timeout", "2", "nodes"});
    CHECK_MESSAGE(r.exit == 1, describe(r));
    CHECK(oneLineReason(r));
    CHECK(r.err.find("cannot connect to mqtts://127.0.0.1:" + std::to_string(port) + ": Connection refused") !=
          std::string::npos);
    CHECK(r.elapsed < 5s);
  }
  SUBCASE("a broker certificate from another CA") {
    TestCa other(tmp / "other-pki");
    auto r = runCtl(tmp, {"--broker", broker.url(), "--cafile", other.caFile().string(), "--cert",
                          hubCert.cert.string(), "--key", hubCert.key.string(), "--timeout", "2", "nodes"});
    CHECK_MESSAGE(r.exit == 1, describe(r));
    CHECK(oneLineReason(r));
    CHECK(r.err.find("cannot connect to " + broker.url() + ": TLS error") != std::string::npos);
  }
  SUBCASE("no client certificate") {
    auto r = runCtl(tmp, {"--broker", broker.url(), "--cafile", ca.caFile().string(), "--timeout", "2", "nodes"});
    CHECK_MESSAGE(r.exit == 1, describe(r));
    CHECK(oneLineReason(r));
    // With TLS 1.3 the client reads either the broker's "certificate required" alert or just the close,
    // depending on timing; both name the cause.
    const std::string prefix = "outriderctl: cannot connect to " + broker.url() + ": ";
    CHECK_MESSAGE(r.err.rfind(prefix, 0) == 0, r.err);
    CHECK_MESSAGE((r.err.find("connection closed during the TLS handshake") != std::string::npos ||
                   r.err.find("alert certificate required") != std::string::npos),
                  r.err);
  }
  SUBCASE("a missing CA file") {
    auto r = runCtl(tmp, {"--broker", broker.url(), "--cafile", (tmp / "nope.crt").string(), "--timeout", "2", "nodes"});
    CHECK_MESSAGE(r.exit == 1, describe(r));
    CHECK(oneLineReason(r));
    CHECK(r.err.find("No such file or directory") != std::string::npos);
  }
}

TEST_CASE_FIXTURE(Env, "settings come from the config file named by OUTRIDER_CTL_CONFIG") {
  publishStatusAsN1(sampleStatus());
  auto conf = tmp / "ctl.toml";
  REQUIRE(writeFileAtomic(conf, "broker = \"" + broker.url() + "\"\ncafile = \"" + ca.caFile().string() +
                                    "\"\ncert = \"" + hubCert.cert.string() + "\"\nkey = \"" +
                                    hubCert.key.string() + "\"\ntimeout = 2\n")
              .ok());
  auto r = runCtl(tmp, {"status", "n1"}, {{"OUTRIDER_CTL_CONFIG", conf.string()}});
  REQUIRE_MESSAGE(r.exit == 0, describe(r));
  CHECK(r.out.find("node:           n1\n") != std::string::npos);
}
