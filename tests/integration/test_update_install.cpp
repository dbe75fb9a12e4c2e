// `outriderctl update` end to end, with the package installed for real on this machine: the installed
// daemons run from /usr/sbin under a supervisor that restarts them as systemd would, the agent talks to a
// real Mosquitto (mutual TLS, ACL), and the updater (spawned by the agent: there is no systemd as PID 1
// here) keeps a rollback package with dpkg-repack and installs with dpkg. Cases, in order:
//  - with the update directory's file system nearly full, the offer is refused before a byte moves;
//  - a transfer cut halfway (outriderctl killed) resumes at what the node holds; the good package commits
//    and the boot-ok hooks run;
//  - a package whose netd cannot start fails the health check and is rolled back, and the reply says why;
//    the rollback hooks run.
// The packages are purged and the file system unmounted whatever happens.
#include <doctest/doctest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <sstream>
#include <fstream>

#include "support/commands_out.hpp"
#include "support/node_fixture.hpp"
#include "support/packaging.hpp"
#include "support/update_node.hpp"

using namespace outrider::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct PurgeAtEnd {
  const TempDir& scratch;
  ~PurgeAtEnd() {
    if (!installedOutriderVersion(scratch).empty()) (void)runCapture({"dpkg", "--purge", "outrider", "outrider-ctl"}, scratch);
  }
};

struct UnmountAtEnd {
  fs::path where;
  ~UnmountAtEnd() { ::umount2(where.c_str(), MNT_DETACH); }
};

/// An updater the agent spawned and the test did not see finish: ended by the PID it wrote.
struct StopUpdaterAtEnd {
  fs::path lock;
  ~StopUpdaterAtEnd() {
    std::ifstream in(lock);
    pid_t pid = 0;
    if (in >> pid && pid > 1 && ::kill(pid, 0) == 0) ::kill(pid, SIGKILL);
  }
};

std::string controlField(const fs::path& deb, const std::string& field, const TempDir& scratch) {
  auto r = runCapture({"dpkg-deb", "--field", deb.string(), field}, scratch);
  REQUIRE(r.rc == 0);
  return r.text.substr(0, r.text.find('\n'));
}

fs::path restamp(const fs::path& base, const std::string& version, const TempDir& scratch,
                 const std::string& replace = {}, const std::string& script = {}) {
  std::string why;
  auto p = restampPackage(base, version, scratch, why, replace, script);
  REQUIRE_MESSAGE(p, why);
  return *p;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("update: refused when the disk is short, a cut transfer resumes and commits, a broken package rolls back") {
  TempDir scratch("update");
  auto arch = hostArch();
  auto debs = buildPackages(scratch, arch, OUTRIDER_BIN_DIR);
  const std::string v1 = controlField(debs.node, "Version", scratch);
  const std::string v2 = v1 + "+good1", v3 = v1 + "+broken1";
  auto good = restamp(debs.node, v2, scratch);
  auto broken = restamp(good, v3, scratch, "usr/sbin/outrider-netd", "echo 'netd: broken build' >&2\nexit 1");

  if (!installedOutriderVersion(scratch).empty()) {
    MESSAGE("purging outrider packages left installed by an earlier run");
    (void)runCapture({"dpkg", "--purge", "outrider", "outrider-ctl"}, scratch);
  }
  PurgeAtEnd purge{scratch};
  auto inst = runCapture({"apt-get", "install", "-y", "--no-install-recommends", debs.node.string()}, scratch);
  REQUIRE_MESSAGE(inst.rc == 0, inst.text);
  REQUIRE(installedOutriderVersion(scratch) == v1);

  // The supervisor (systemd's Restart=) and the restart command the updater runs (systemctl restart).
  TempDir tools("update-tools");
  writeExecutable(tools / "supervise", kSuperviseScript);
  TempDir hooks("update-hooks");
  writeExecutable(hooks / "boot-ok.d" / "10-mark", "echo \"$OUTRIDER_VERSION_TO\" >> " + (hooks / "boot-ok.ran").string());
  writeExecutable(hooks / "rollback.d" / "10-mark", "echo \"$OUTRIDER_REASON\" >> " + (hooks / "rollback.ran").string());
  writeExecutable(hooks / "pre-update.d" / "10-ok", "echo \"pre-update $OUTRIDER_VERSION_FROM -> $OUTRIDER_VERSION_TO\"");

  NodeFixtureOptions o;
  o.binDir = "/usr/sbin";
  o.supervisor = tools / "supervise";
  o.libvirtUri = "test:///default";
  NodeFixture* self = nullptr;
  auto restartScript = tools / "restart";
  o.telemetryExtra = "[hooks]\ndir = \"" + hooks.path().string() + "\"\ntimeout_s = 20\n" +
                     "[update]\nlauncher = \"spawn\"\nreserve_mb = 0\nhealth_deadline_s = 60\nroot_dir = \"" +
                     (tools / "updater").string() + "\"\n" +
                     "restart_command = [\"" + restartScript.string() + "\"]\n";
  NodeFixture n(o);
  self = &n;
  writeExecutable(restartScript, "for f in " + (n / "agent.pid").string() + " " + (n / "netd.pid").string() + " " +
                                 (n / "vmm.pid").string() + "; do kill -TERM \"$(cat \"$f\")\"; done");
  auto updateDir = n / "agent-state" / "update";
  fs::create_directories(updateDir);
  // The update directory on a file system of its own, small enough to be filled.
  REQUIRE_MESSAGE(::mount("tmpfs", updateDir.c_str(), "tmpfs", 0, "size=24m,mode=0700") == 0, std::strerror(errno));
  UnmountAtEnd unmount{updateDir};
  StopUpdaterAtEnd stopUpdater{updateDir / "updater.lock"};

  n.startAll();
  auto online = [&] {
    auto [rc, out] = n.ctl({"ping", "n1"}, 5);
    return rc == 0;
  };
  REQUIRE_MESSAGE(waitFor(online, 30s), self->diagnostics());

  {
    // Disk short: 24 MiB less a filler leaves less than the update needs; refused at the offer.
    {
      std::ofstream filler(updateDir / "filler", std::ios::binary);
      std::string mb(1 << 20, 'x');
      for (int i = 0; i < 20; ++i) filler << mb;
    }
    auto [rc, out] = n.ctl({"update", "n1", good.string()}, 30);
    INFO(out);
    CHECK(rc != 0);
    CHECK(out.find("not enough disk space") != std::string::npos);
    bool anyPart = false;
    for (const auto& e : fs::directory_iterator(updateDir)) anyPart |= e.path().extension() == ".part";
    CHECK_FALSE(anyPart);
    fs::remove(updateDir / "filler");
  }
  {
    // Cut halfway: outriderctl killed once it has sent 40% in small pieces; run again, it resumes.
    Process cut({binary("outriderctl").string(), "--broker", n.broker.url(), "--cafile", n.ca.caFile().string(),
                 "--cert", n.hubCert().cert.string(), "--key", n.hubCert().key.string(), "--sign-key",
                 (n / "operator.key").string(), "update", "n1", good.string(), "--chunk-kib", "4"},
                scratch / "cut.log");
    auto sent40 = [&] { return slurp(scratch / "cut.log").find("(40%)") != std::string::npos; };
    waitFor([&] { return sent40() || !cut.running(); }, 120s);
    bool partway = sent40();
    cut.signal(SIGKILL);
    cut.wait(5s);
    REQUIRE_MESSAGE(partway, slurp(scratch / "cut.log"));

    auto [rc, out] = n.ctl({"update", "n1", good.string(), "--health-deadline", "60"}, 60);
    INFO(out);
    INFO(self->diagnostics());
    INFO(slurp(updateDir / "updater.log"));
    CHECK(rc == 0);
    auto at = out.find("resuming at byte ");
    REQUIRE(at != std::string::npos);
    auto resumedAt = std::stoull(out.substr(at + 17));
    CHECK(resumedAt >= fs::file_size(good) * 4 / 10);
    CHECK(resumedAt < fs::file_size(good));
    CHECK(out.find("pre-update: 1 ran, ok") != std::string::npos);
    CHECK(out.find("committed: outrider " + v2 + " (was " + v1 + ")") != std::string::npos);
    CHECK(installedOutriderVersion(scratch) == v2);
    CHECK(slurp(hooks / "boot-ok.ran") == v2 + "\n");
    auto [src, sout] = n.ctl({"update", "status", "n1"}, 10);
    CHECK(src == 0);
    CHECK(sout.find("committed (" + v1 + " -> " + v2 + ")") != std::string::npos);
  }
  {
    // Broken: the new netd never starts; at the deadline the agent says so and the updater rolls back.
    auto [rc, out] = n.ctl({"update", "n1", broken.string(), "--health-deadline", "8"}, 60);
    INFO(out);
    INFO(self->diagnostics());
    INFO(slurp(updateDir / "updater.log"));
    CHECK(rc != 0);
    CHECK(out.find("rolled back to outrider " + v2 + ": health check failed: netd UNREACHABLE") != std::string::npos);
    CHECK(installedOutriderVersion(scratch) == v2);
    CHECK(slurp(hooks / "rollback.ran").find("netd UNREACHABLE") != std::string::npos);
    // And the node serves on, with the rolled-back daemons.
    CHECK(waitFor(online, 30s));
    auto [src, sout] = n.ctl({"--json", "update", "status", "n1"}, 10);
    CHECK(sout.find("\"phase\":\"rolled-back\"") != std::string::npos);
  }
  {
    // A request the operator never signed, as a compromised agent (user outrider) could write one: the root
    // updater checks the signature itself, refuses, and installs nothing.
    const std::string sha(64, 'a');
    std::ofstream(updateDir / "request") << "format=1\ncommand=forged-1\nsha256=" << sha << "\npackage="
                                         << (updateDir / (sha + ".deb")).string() << "\nfrom=" << v2 << "\nto=9.9\n"
                                         << "phase=requested\n";
    int rc = run({"/usr/sbin/outrider-agent", "update-apply", "--config", (n / "agent.toml").string()},
                 scratch / "forged.log");
    INFO(slurp(scratch / "forged.log"));
    CHECK(rc == 1);
    CHECK(slurp(scratch / "forged.log").find("carries no operator-signed install command") != std::string::npos);
    CHECK_FALSE(fs::exists(updateDir / "request"));
    CHECK(installedOutriderVersion(scratch) == v2);
  }
}
