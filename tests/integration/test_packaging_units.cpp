// The systemd units as shipped (systemd/): the properties the node relies on, and each service's exposure
// score from `systemd-analyze security --offline=yes` against its goal.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "support/commands_out.hpp"

using namespace outrider::test;
namespace fs = std::filesystem;

namespace {
fs::path unitDir() { return fs::path(OUTRIDER_SOURCE_DIR) / "systemd"; }

/// Every KEY=VALUE line of a unit file; repeated keys keep all values.
std::multimap<std::string, std::string> readUnit(const fs::path& p) {
  std::multimap<std::string, std::string> kv;
  std::ifstream in(p);
  REQUIRE_MESSAGE(in, "cannot read " << p);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line[0] == '[') continue;
    auto eq = line.find('=');
    if (eq != std::string::npos) kv.emplace(line.substr(0, eq), line.substr(eq + 1));
  }
  return kv;
}

std::string one(const std::multimap<std::string, std::string>& kv, const std::string& key) {
  auto it = kv.find(key);
  return it == kv.end() ? std::string() : it->second;
}

double exposure(const std::string& unit, const TempDir& scratch) {
  auto out = runCapture({"systemd-analyze", "security", "--offline=yes", "--no-pager", (unitDir() / unit).string()},
                        scratch);
  std::smatch m;
  static const std::regex re(R"(Overall exposure level for \S+: ([0-9.]+))");
  REQUIRE_MESSAGE(std::regex_search(out.text, m, re), out.text);
  return std::stod(m[1]);
}
}  // namespace

TEST_CASE("each service is Type=notify with a watchdog, restarts on failure, and is ordered as the node needs") {
  for (const char* name : {"outrider-agent.service", "outrider-vmm.service", "outrider-netd.service"}) {
    CAPTURE(name);
    auto u = readUnit(unitDir() / name);
    CHECK(one(u, "Type") == "notify");
    CHECK_FALSE(one(u, "WatchdogSec").empty());
    CHECK(one(u, "Restart") == "on-failure");
    CHECK(one(u, "NoNewPrivileges") == "yes");
    CHECK(one(u, "ProtectSystem") == "strict");
    CHECK(one(u, "ProtectHome") == "yes");
    CHECK(one(u, "PrivateTmp") == "yes");
    CHECK_FALSE(one(u, "ReadWritePaths").empty());
    CHECK_FALSE(one(u, "RestrictAddressFamilies").empty());
    CHECK(one(u, "PartOf") == "outrider.target");
    CHECK(one(u, "ExecStart").rfind("/usr/sbin/", 0) == 0);
  }
  auto agent = readUnit(unitDir() / "outrider-agent.service");
  CHECK(one(agent, "User") == "outrider");
  CHECK(one(agent, "CapabilityBoundingSet").empty());  // present and empty: no capabilities
  CHECK(agent.count("CapabilityBoundingSet") == 1);
  CHECK(one(agent, "After").find("outrider-netd.service") != std::string::npos);
  CHECK(one(agent, "SystemCallFilter") == "@system-service");

  auto netd = readUnit(unitDir() / "outrider-netd.service");
  CHECK(one(netd, "CapabilityBoundingSet") == "CAP_NET_ADMIN");
  CHECK(one(netd, "AmbientCapabilities") == "CAP_NET_ADMIN");
  CHECK(one(netd, "Before").find("outrider-agent.service") != std::string::npos);
  CHECK(one(netd, "SystemCallFilter") == "@system-service");

  auto vmm = readUnit(unitDir() / "outrider-vmm.service");
  CHECK(one(vmm, "After").find("libvirtd.service") != std::string::npos);
  CHECK(one(vmm, "AmbientCapabilities").empty());
  CHECK(one(vmm, "KillMode") == "process");  // containers' supervisors outlive a vmm restart

  auto target = readUnit(unitDir() / "outrider.target");
  for (const char* s : {"outrider-agent.service", "outrider-vmm.service", "outrider-netd.service"})
    CHECK(one(target, "Wants").find(s) != std::string::npos);
}

TEST_CASE("exposure scores meet their goals: agent <= 2.0, netd <= 3.0, vmm <= 4.5") {
  TempDir scratch("units");
  struct Goal {
    const char* unit;
    double max;
  };
  for (Goal g : {Goal{"outrider-agent.service", 2.0}, Goal{"outrider-netd.service", 3.0},
                 Goal{"outrider-vmm.service", 4.5}}) {
    double score = exposure(g.unit, scratch);
    std::printf("exposure %-24s %.1f (goal <= %.1f)\n", g.unit, score, g.max);
    CHECK_MESSAGE(score <= g.max, g.unit << " exposure " << score);
  }
}

TEST_CASE("the provisioning udev rule starts the oneshot unit for a file system labelled OUTRIDER") {
  std::ifstream in(unitDir() / "60-outrider-provision.rules");
  std::stringstream ss;
  ss << in.rdbuf();
  auto rule = ss.str();
  CHECK(rule.find("ENV{ID_FS_LABEL}==\"OUTRIDER\"") != std::string::npos);
  CHECK(rule.find("SYSTEMD_WANTS}+=\"outrider-provision@%k.service\"") != std::string::npos);
  auto u = readUnit(unitDir() / "outrider-provision@.service");
  CHECK(one(u, "Type") == "oneshot");
  CHECK(one(u, "User") == "outrider");
  CHECK(one(u, "ExecStartPre").find("-o ro,") != std::string::npos);  // the stick is mounted read-only
  CHECK(one(u, "ExecStart").find("outrider-agent provision --from") != std::string::npos);
}

TEST_CASE("an update request in the agent's update directory starts the root updater, which dpkg leaves alone") {
  auto p = readUnit(unitDir() / "outrider-update.path");
  CHECK(one(p, "PathExists") == "/var/lib/outrider/agent/update/request");
  CHECK(one(p, "Unit") == "outrider-update.service");
  auto s = readUnit(unitDir() / "outrider-update.service");
  CHECK(one(s, "Type") == "oneshot");
  CHECK(one(s, "User").empty());  // root: it runs dpkg
  CHECK(one(s, "ExecStart") == "/usr/sbin/outrider-agent update-apply --config /etc/outrider/agent.toml");
  CHECK(one(s, "KillMode") == "process");
  CHECK(s.count("ConditionPathExists") == 2);  // idle at boot unless an update was cut short
  // The package's maintainer scripts must not start, stop or restart the updater while it runs dpkg.
  std::ifstream in(fs::path(OUTRIDER_SOURCE_DIR) / "packaging/debian/rules");
  std::stringstream rules;
  rules << in.rdbuf();
  CHECK(rules.str().find("dh_installsystemd -Xoutrider-update.service") != std::string::npos);
  CHECK(rules.str().find("--no-start --no-stop-on-upgrade outrider-update.service") != std::string::npos);
}

TEST_CASE("the boot watcher runs once per boot as root, and package upgrades leave it alone") {
  auto s = readUnit(unitDir() / "outrider-boot.service");
  CHECK(one(s, "User").empty());  // root: it writes the boot loader's environment
  CHECK(one(s, "ExecStart") == "/usr/sbin/outrider-agent boot-watch --config /etc/outrider/agent.toml");
  CHECK(one(s, "WantedBy") == "multi-user.target");
  CHECK(one(s, "ProtectSystem").empty());  // /boot/grub/grubenv must stay writable
  std::ifstream in(fs::path(OUTRIDER_SOURCE_DIR) / "packaging/debian/rules");
  std::stringstream rules;
  rules << in.rdbuf();
  CHECK(rules.str().find("-Xoutrider-boot.service") != std::string::npos);
  CHECK(rules.str().find("--no-stop-on-upgrade outrider-update.service outrider-boot.service") != std::string::npos);
}
