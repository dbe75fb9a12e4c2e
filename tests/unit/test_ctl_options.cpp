// outriderctl option parsing: flags > environment > config file > defaults, and usage errors.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "outrider/ctl/app.hpp"
#include "outrider/ctl/options.hpp"
#include "support/process.hpp"

using namespace outrider::ctl;
using outrider::Result;
using outrider::test::TempDir;

namespace {

void writeText(const std::filesystem::path& p, std::string_view text) {
  std::ofstream out(p);
  out << text;
}

// Sets environment variables for the lifetime of the object and restores the previous values.
class ScopedEnv {
 public:
  ScopedEnv& set(const char* name, const std::string& value) {
    remember(name);
    ::setenv(name, value.c_str(), 1);
    return *this;
  }
  ScopedEnv& unset(const char* name) {
    remember(name);
    ::unsetenv(name);
    return *this;
  }
  ~ScopedEnv() {
    for (auto& [name, old] : saved_) {
      if (old)
        ::setenv(name.c_str(), old->c_str(), 1);
      else
        ::unsetenv(name.c_str());
    }
  }

 private:
  void remember(const char* name) {
    if (saved_.count(name)) return;
    const char* v = ::getenv(name);
    saved_[name] = v ? std::optional<std::string>(v) : std::nullopt;
  }
  std::map<std::string, std::optional<std::string>> saved_;
};

const char* kAllVars[] = {"OUTRIDER_BROKER", "OUTRIDER_CAFILE",   "OUTRIDER_CERT",      "OUTRIDER_KEY",
                          "OUTRIDER_SIGN_KEY", "OUTRIDER_TIMEOUT", "OUTRIDER_CTL_CONFIG"};

// A clean environment: no OUTRIDER_* variables and HOME pointing at an empty directory.
ScopedEnv cleanEnv(const TempDir& home) {
  ScopedEnv env;
  for (const char* v : kAllVars) env.unset(v);
  env.set("HOME", home.path().string());
  return env;
}

Result<Invocation> parse(std::vector<std::string> args) { return parseInvocation(args); }

struct Run {
  int exit;
  std::string out, err;
};
Run runWith(std::vector<std::string> args) {
  std::ostringstream out, err;
  int rc = runCtl(args, out, err);
  return {rc, out.str(), err.str()};
}

}  // namespace

TEST_CASE("defaults apply when nothing is configured") {
  TempDir home("ctl-home");
  auto env = cleanEnv(home);
  auto inv = parse({"nodes"});
  REQUIRE(inv.ok());
  CHECK(inv->global.broker == "mqtts://127.0.0.1:8883");
  CHECK(inv->global.cafile.empty());
  CHECK(inv->global.signKey.empty());
  CHECK(inv->global.timeoutS == 10.0);
  CHECK(inv->global.timeout() == std::chrono::seconds(10));
  CHECK_FALSE(inv->global.json);
  CHECK(inv->words == std::vector<std::string>{"nodes"});
  CHECK_FALSE(inv->configFile.has_value());
}

TEST_CASE("precedence is flags > environment > config file > defaults") {
  TempDir home("ctl-home");
  auto env = cleanEnv(home);
  TempDir dir("ctl-conf");
  auto file = dir / "ctl.toml";
  writeText(file,
            "broker = \"mqtt://file-host:1\"\n"
            "cafile = \"ca.pem\"\n"
            "cert = \"/abs/file.crt\"\n"
            "key = \"file.key\"\n"
            "sign_key = \"op.key\"\n"
            "timeout = 3\n");
  env.set("OUTRIDER_CTL_CONFIG", file.string());

  SUBCASE("file over defaults; relative paths are relative to the file") {
    auto inv = parse({"nodes"});
    REQUIRE_MESSAGE(inv.ok(), (inv.ok() ? "" : inv.error().message));
    CHECK(inv->global.broker == "mqtt://file-host:1");
    CHECK(inv->global.cafile == (dir / "ca.pem").string());
    CHECK(inv->global.cert == "/abs/file.crt");
    CHECK(inv->global.key == (dir / "file.key").string());
    CHECK(inv->global.signKey == (dir / "op.key").string());
    CHECK(inv->global.timeoutS == 3.0);
    REQUIRE(inv->configFile);
    CHECK(*inv->configFile == file);
  }
  SUBCASE("environment over file") {
    env.set("OUTRIDER_BROKER", "mqtt://env-host:2").set("OUTRIDER_TIMEOUT", "4.5").set("OUTRIDER_CERT", "env.crt");
    auto inv = parse({"nodes"});
    REQUIRE(inv.ok());
    CHECK(inv->global.broker == "mqtt://env-host:2");
    CHECK(inv->global.timeoutS == 4.5);
    CHECK(inv->global.cert == "env.crt");
    CHECK(inv->global.cafile == (dir / "ca.pem").string());  // not overridden: still from the file
  }
  SUBCASE("flags over environment, before or after the command") {
    env.set("OUTRIDER_BROKER", "mqtt://env-host:2").set("OUTRIDER_TIMEOUT", "4.5").set("OUTRIDER_SIGN_KEY", "env.key");
    auto inv = parse({"--broker", "mqtts://flag-host:3", "ping", "n1", "--timeout=2", "--sign-key", "flag.key",
                      "--json", "--count", "5"});
    REQUIRE(inv.ok());
    CHECK(inv->global.broker == "mqtts://flag-host:3");
    CHECK(inv->global.timeoutS == 2.0);
    CHECK(inv->global.signKey == "flag.key");
    CHECK(inv->global.json);
    CHECK(inv->global.cert == "/abs/file.crt");
    CHECK(inv->words == std::vector<std::string>{"ping", "n1"});
    CHECK(inv->local.at("count") == "5");
  }
}

TEST_CASE("the default config file is ~/.config/outrider/ctl.toml") {
  TempDir home("ctl-home");
  auto env = cleanEnv(home);
  std::filesystem::create_directories(home / ".config/outrider");
  writeText(home / ".config/outrider/ctl.toml", "broker = \"mqtt://home-file:9\"\n");
  auto inv = parse({"nodes"});
  REQUIRE(inv.ok());
  CHECK(inv->global.broker == "mqtt://home-file:9");
}

TEST_CASE("an unknown config key names file, line and key") {
  TempDir home("ctl-home");
  auto env = cleanEnv(home);
  TempDir dir("ctl-conf");
  auto file = dir / "ctl.toml";
  writeText(file, "broker = \"mqtt://x:1\"\n\ntimout = 3\n");
  env.set("OUTRIDER_CTL_CONFIG", file.string());
  auto inv = parse({"nodes"});
  REQUIRE_FALSE(inv.ok());
  const std::string& msg = inv.error().message;
  CHECK(msg.find(file.string() + ":3") != std::string::npos);
  CHECK(msg.find("timout") != std::string::npos);
  CHECK(msg.find("unknown key") != std::string::npos);

  auto r = runWith({"nodes"});
  CHECK(r.exit == kExitUsage);
  CHECK(r.err.find(file.string() + ":3") != std::string::npos);
}

TEST_CASE("config errors: wrong type, missing explicit file") {
  TempDir home("ctl-home");
  auto env = cleanEnv(home);
  TempDir dir("ctl-conf");
  auto file = dir / "ctl.toml";
  writeText(file, "timeout = \"soon\"\n");
  env.set("OUTRIDER_CTL_CONFIG", file.string());
  auto inv = parse({"nodes"});
  REQUIRE_FALSE(inv.ok());
  CHECK(inv.error().message.find(file.string() + ":1") != std::string::npos);
  CHECK(inv.error().message.find("timeout") != std::string::npos);

  env.set("OUTRIDER_CTL_CONFIG", (dir / "missing.toml").string());
  auto missing = parse({"nodes"});
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("missing.toml") != std::string::npos);
}

TEST_CASE("bad timeout values are usage errors") {
  TempDir home("ctl-home");
  auto env = cleanEnv(home);
  for (const char* bad : {"abc", "0", "-1", "", "1s", "nan", "inf", "1e9", " 5"}) {
    CAPTURE(bad);
    auto inv = parse({"nodes", "--timeout", bad});
    CHECK_FALSE(inv.ok());
    auto r = runWith({"nodes", "--timeout", bad});
    CHECK(r.exit == kExitUsage);
    CHECK(r.out.empty());
    CHECK(r.err.rfind("outriderctl: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
  env.set("OUTRIDER_TIMEOUT", "later");
  auto inv = parse({"nodes"});
  REQUIRE_FALSE(inv.ok());
  CHECK(inv.error().message.find("OUTRIDER_TIMEOUT") != std::string::npos);
  CHECK(parseTimeoutSeconds("2.5").value() == 2.5);
  CHECK(parseTimeoutSeconds("10").value() == 10.0);
}

TEST_CASE("command-line usage errors exit 2 with one line") {
  TempDir home("ctl-home");
  auto env = cleanEnv(home);
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"nodes", "--bogus"},
      {"nodes", "-x"},
      {"nodes", "--timeout"},
      {"nodes", "extra"},
      {"nodes", "--count", "3"},
      {"status"},
      {"status", "bad/node"},
      {"ping", "n1"},  // no --sign-key
      {"ping", "n1", "--sign-key", "k", "--count", "0"},
      {"ping", "n1", "--sign-key", "k", "--hold", "-5"},
      {"keys"},
      {"keys", "gen"},
      {"keys", "list"},
      {"nodes", "--broker", "http://x:1"},
      {"nodes", "--broker", "mqtt://x:99999"},
      {"nodes", "--json=yes"},
      {"nodes", "--cafile", "ca.pem", "--cert", "c.pem"},  // cert without key
  };
  for (const auto& args : cases) {
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    CAPTURE(joined);
    auto r = runWith(args);
    CHECK(r.exit == kExitUsage);
    CHECK(r.err.rfind("outriderctl: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
  auto noKey = runWith({"ping", "n1"});
  CHECK(noKey.err.find("--sign-key") != std::string::npos);
}

TEST_CASE("--help and help print usage and exit 0") {
  TempDir home("ctl-home");
  auto env = cleanEnv(home);
  for (const auto& args : std::vector<std::vector<std::string>>{{"--help"}, {"help"}, {"-h"}, {"ping", "--help"}}) {
    auto r = runWith(args);
    CHECK(r.exit == 0);
    CHECK(r.err.empty());
    CHECK(r.out.find("usage: outriderctl") != std::string::npos);
    CHECK(r.out.find("keys gen --out NAME") != std::string::npos);
  }
  // Help works even when the config file is broken.
  TempDir dir("ctl-conf");
  writeText(dir / "ctl.toml", "nonsense = 1\n");
  env.set("OUTRIDER_CTL_CONFIG", (dir / "ctl.toml").string());
  CHECK(runWith({"--help"}).exit == 0);
}

TEST_CASE("broker URLs") {
  auto a = BrokerUrl::parse("mqtts://127.0.0.1:8883");
  REQUIRE(a.ok());
  CHECK(a->tls);
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 8883);
  auto b = BrokerUrl::parse("mqtt://broker.example");
  REQUIRE(b.ok());
  CHECK_FALSE(b->tls);
  CHECK(b->port == 1883);
  CHECK(b->text() == "mqtt://broker.example:1883");
  auto c = BrokerUrl::parse("mqtts://[::1]:1234");
  REQUIRE(c.ok());
  CHECK(c->host == "::1");
  CHECK(c->text() == "mqtts://[::1]:1234");
  for (const char* bad : {"tcp://x:1", "mqtt://", "mqtt://:1", "mqtt://x:", "mqtt://x:0", "mqtt://x:abc", "mqtts://[::1"})
    CHECK_MESSAGE(!BrokerUrl::parse(bad).ok(), bad);
}
