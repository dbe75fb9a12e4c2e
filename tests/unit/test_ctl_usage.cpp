// Usage errors of the workload commands: refused locally (exit 2, one line), before any broker is contacted.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "outrider/ctl/app.hpp"
#include "support/process.hpp"

using namespace outrider;

namespace {
struct Run {
  int exit;
  std::string err;
};
Run runCli(std::vector<std::string> args) {
  std::ostringstream out, err;
  // No broker listens on port 1: anything that got past the local checks fails with exit 1.
  args.insert(args.begin(), {"--broker", "mqtt://127.0.0.1:1", "--timeout", "1"});
  int rc = ctl::runCtl(args, out, err, [](std::string_view) { return std::optional<std::string>(); });
  return {rc, err.str()};
}
}  // namespace

TEST_CASE("vm and ct commands check their words and options locally") {
  CHECK(runCli({"vm"}).exit == 2);
  auto r = runCli({"vm", "explode", "n1", "x"});
  CHECK(r.exit == 2);
  CHECK(r.err.find("unknown vm command 'explode'") != std::string::npos);
  r = runCli({"vm", "start", "n1", "../x"});
  CHECK(r.exit == 2);
  CHECK(r.err.find("invalid VM name '../x'") != std::string::npos);
  r = runCli({"vm", "list", "n1", "extra"});
  CHECK(r.exit == 2);
  CHECK(runCli({"vm", "list", "n1", "--grace", "3"}).err.find("option --grace is not valid for 'vm list'") !=
        std::string::npos);
  CHECK(runCli({"vm", "stop", "n1", "web", "--grace", "0"}).exit == 2);  // at least 1
  CHECK(runCli({"vm", "stop", "bad/node", "web"}).exit == 2);
  CHECK(runCli({"ct", "logs", "n1", "c", "--grace", "2"}).exit == 2);
  CHECK(runCli({"ct", "rm", "n1", "c"}).err.find("unknown ct command 'rm'") != std::string::npos);
  CHECK(runCli({"tunnel", "up", "n1"}).exit == 2);
  CHECK(runCli({"telemetry", "watch", "n1", "x"}).exit == 2);
  CHECK(runCli({"events", "n1", "--count", "0"}).exit == 2);

  // Well-formed: they get as far as needing a key, or the broker.
  r = runCli({"vm", "stop", "n1", "web", "--grace", "5"});
  CHECK(r.exit == 2);
  CHECK(r.err.find("needs the operator signing key") != std::string::npos);
  r = runCli({"events", "n1", "--for", "1"});
  CHECK(r.exit == 1);
  CHECK(r.err.find("cannot connect") != std::string::npos);
}

TEST_CASE("apply checks the manifest before anything is signed or sent") {
  test::TempDir dir;
  auto bad = dir / "m.toml";
  std::ofstream(bad) << "version = 2\n[[vm]]\nname = \"web\"\nmemory_mib = 4\nkernel = { path = \"/k\" }\n";
  auto r = runCli({"apply", "n1", bad.string()});
  CHECK(r.exit == 2);
  CHECK(r.err.find(bad.string() + ":2: vm 'web': memory_mib: 4 is outside 16..4194304") != std::string::npos);
  r = runCli({"apply", "n1", (dir / "missing.toml").string()});
  CHECK(r.exit == 1);
  CHECK(r.err.find("cannot read") != std::string::npos);
}
