// The node package on this machine, as an operator would use it: `apt-get install ./outrider_*.deb`
// creates the user and the state directories; the three daemons start from their installed paths with the
// installed default configuration, each as its unit's user with its unit's capabilities (there is no
// systemd as PID 1 here, so the test runs the units' ExecStart lines itself, with a notify socket standing
// in for systemd); an upgrade keeps a locally edited conffile and the node's state; `dpkg --purge` leaves
// nothing behind. The packages are installed for real, so the test purges them again whatever happens.
#include <doctest/doctest.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "support/commands_out.hpp"
#include "support/notify_socket.hpp"
#include "support/packaging.hpp"

using namespace outrider::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

bool installed(const std::string& pkg, const TempDir& scratch) {
  auto r = runCapture({"dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg}, scratch);
  return r.rc == 0 && r.text.rfind("ii", 0) == 0;
}

/// Purges the packages when the test ends, also when it fails.
struct PurgeAtEnd {
  const TempDir& scratch;
  ~PurgeAtEnd() {
    if (installed("outrider", scratch) || installed("outrider-ctl", scratch))
      (void)runCapture({"dpkg", "--purge", "outrider", "outrider-ctl"}, scratch);
  }
};

std::multimap<std::string, std::string> readUnit(const fs::path& p) {
  std::multimap<std::string, std::string> kv;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line[0] == '[') continue;
    auto eq = line.find('=');
    if (eq != std::string::npos) kv.emplace(line.substr(0, eq), line.substr(eq + 1));
  }
  return kv;
}

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> w;
  std::istringstream in(s);
  for (std::string x; in >> x;) w.push_back(x);
  return w;
}

std::string lowerCap(std::string c) {
  if (c.rfind("CAP_", 0) == 0) c = c.substr(4);
  for (auto& ch : c) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return c;
}

/// The unit's ExecStart, wrapped in setpriv so that it runs as the unit's User= with the unit's
/// CapabilityBoundingSet= and AmbientCapabilities=, and NoNewPrivileges.
std::vector<std::string> commandOf(const fs::path& unit) {
  auto u = readUnit(unit);
  std::vector<std::string> argv{"setpriv", "--no-new-privs"};
  if (auto group = u.find("Group"); group != u.end()) argv.push_back("--regid=" + group->second);
  if (auto user = u.find("User"); user != u.end()) {
    argv.push_back("--reuid=" + user->second);
    argv.push_back("--init-groups");
  } else if (u.count("Group")) {
    argv.push_back("--clear-groups");
  }
  if (auto b = u.find("CapabilityBoundingSet"); b != u.end()) {
    std::string spec;
    if (b->second.empty()) {
      spec = "-all";
    } else if (b->second[0] == '~') {
      for (auto& c : words(b->second.substr(1))) spec += (spec.empty() ? "-" : ",-") + lowerCap(c);
    } else {
      spec = "-all";
      for (auto& c : words(b->second)) spec += ",+" + lowerCap(c);
    }
    argv.push_back("--bounding-set=" + spec);
  }
  if (auto a = u.find("AmbientCapabilities"); a != u.end() && !a->second.empty()) {
    std::string caps = "-all";
    for (auto& c : words(a->second)) caps += ",+" + lowerCap(c);
    argv.push_back("--inh-caps=" + caps);
    argv.push_back("--ambient-caps=" + caps);
  }
  argv.push_back("--");
  for (auto& w : words(u.find("ExecStart")->second)) argv.push_back(w);
  return argv;
}

struct Owner {
  std::string user, group;
  unsigned mode;
};
Owner ownerOf(const fs::path& p) {
  struct stat st {};
  REQUIRE_MESSAGE(::lstat(p.c_str(), &st) == 0, p << " is missing");
  auto* pw = ::getpwuid(st.st_uid);
  auto* gr = ::getgrgid(st.st_gid);
  return {pw ? pw->pw_name : std::to_string(st.st_uid), gr ? gr->gr_name : std::to_string(st.st_gid),
          static_cast<unsigned>(st.st_mode & 07777)};
}

/// Can user `user` connect to the unix socket at `path`? Checked in a child that drops to that user.
bool canConnectAs(const std::string& user, const fs::path& path) {
  auto* pw = ::getpwnam(user.c_str());
  REQUIRE(pw);
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::initgroups(pw->pw_name, pw->pw_gid) != 0 || ::setgid(pw->pw_gid) != 0 || ::setuid(pw->pw_uid) != 0)
      ::_exit(3);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    ::_exit(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 ? 0 : 1);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

}  // namespace

TEST_CASE("install, run the units' commands, upgrade keeping conffiles and state, purge leaving nothing") {
  TempDir scratch("install");
  auto arch = hostArch();
  auto v1 = buildPackages(scratch, arch, OUTRIDER_BIN_DIR);
  auto v2 = buildPackages(scratch, arch, OUTRIDER_BIN_DIR, "0.1.0+upgrade1");

  if (installed("outrider", scratch) || installed("outrider-ctl", scratch)) {
    MESSAGE("purging outrider packages left installed by an earlier run");
    (void)runCapture({"dpkg", "--purge", "outrider", "outrider-ctl"}, scratch);
  }
  REQUIRE_FALSE(fs::exists("/var/lib/outrider"));
  REQUIRE_FALSE(fs::exists("/etc/outrider"));
  PurgeAtEnd purge{scratch};

  auto aptInstall = [&](const Debs& d) {
    return runCapture({"env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                       "--no-install-recommends", "-o", "Dpkg::Options::=--force-confold", "-o",
                       "DPkg::Lock::Timeout=300", d.node.string(), d.ctl.string()},
                      scratch);
  };
  auto in1 = aptInstall(v1);
  REQUIRE_MESSAGE(in1.rc == 0, in1.text);
  REQUIRE(installed("outrider", scratch));
  REQUIRE(installed("outrider-ctl", scratch));
  auto listed = runCapture({"dpkg", "-L", "outrider", "outrider-ctl"}, scratch);
  REQUIRE(listed.rc == 0);

  {
    // The user and the state directories with their owners and modes.
    REQUIRE(::getpwnam("outrider"));
    CHECK(std::string(::getpwnam("outrider")->pw_shell) == "/usr/sbin/nologin");
    auto o = ownerOf("/var/lib/outrider/agent");
    CHECK(o.user == "outrider");
    CHECK(o.mode == 0700);
    CHECK(ownerOf("/var/lib/outrider").mode == 0755);
    CHECK(ownerOf("/var/lib/outrider/vms").user == "root");
    CHECK(ownerOf("/var/lib/outrider/netd").mode == 0700);
    auto run = ownerOf("/run/outrider");
    CHECK(run.group == "outrider");
    CHECK(run.mode == 01770);
    CHECK(fs::exists("/etc/outrider/hooks/provisioned.d"));

    // systemd accepts every installed unit (ExecStart binaries and man pages now exist).
    for (const char* u : {"outrider-agent.service", "outrider-vmm.service", "outrider-netd.service",
                          "outrider.target", "outrider-provision@sdz1.service", "outrider-update.path",
                          "outrider-update.service", "outrider-boot.service"}) {
      fs::path file = fs::path("/lib/systemd/system") / (std::string(u).find('@') != std::string::npos
                                                             ? std::string("outrider-provision@.service")
                                                             : std::string(u));
      auto v = runCapture({"systemd-analyze", "verify", "--man=yes", file.string()}, scratch);
      CHECK_MESSAGE(v.rc == 0, u << ": " << v.text);
    }
  }

  {
    // The daemons, from their installed paths with the installed configuration, as their units run them.
    NotifySocket notify(scratch / "notify.sock");
    ::chmod(notify.path.c_str(), 0666);  // the agent sends READY=1 as user outrider
    struct Running {
      std::string name;
      Process proc;
    };
    std::vector<Running> daemons;
    for (const char* name : {"outrider-netd", "outrider-vmm", "outrider-agent"}) {
      auto argv = commandOf(fs::path("/lib/systemd/system") / (std::string(name) + ".service"));
      daemons.push_back({name, Process(argv, scratch / (std::string(name) + ".log"),
                                       {{"NOTIFY_SOCKET", notify.path.string()}, {"WATCHDOG_USEC", "30000000"}})});
      CHECK_MESSAGE(notify.waitFor("READY=1", 30s), std::string(name) << " did not report READY:\n" << daemons.back().proc.log());
    }
    CHECK(fs::exists("/var/lib/outrider/netd/wg.key"));
    CHECK(ownerOf("/var/lib/outrider/netd/wg.key").mode == 0600);
    for (const char* sock : {"/run/outrider/vmm.sock", "/run/outrider/netd.sock"}) {
      auto o = ownerOf(sock);
      CHECK_MESSAGE(o.group == "outrider", sock);
      CHECK_MESSAGE(o.mode == 0660, sock);
      CHECK_MESSAGE(canConnectAs("outrider", sock), "the agent's user cannot reach " << sock);
      CHECK_MESSAGE(!canConnectAs("nobody", sock), "anyone can reach " << sock);
    }
    auto& agent = daemons.back();
    CHECK_MESSAGE(waitFor([&] { return agent.proc.log().find("not provisioned") != std::string::npos; }, 10s),
                  agent.proc.log());
    for (auto it = daemons.rbegin(); it != daemons.rend(); ++it) {
      it->proc.signal(SIGTERM);
      auto st = it->proc.wait(20s);
      REQUIRE_MESSAGE(st, it->name << " did not stop on SIGTERM");
      CHECK_MESSAGE((WIFEXITED(*st) && WEXITSTATUS(*st) == 0), it->name << " exit status " << *st << "\n"
                                                                      << it->proc.log());
    }
  }

  {
    // An upgrade keeps the operator's edit of a conffile and the node's state.
    std::ofstream("/etc/outrider/agent.toml", std::ios::app) << "# edited on site\n";
    std::ofstream("/var/lib/outrider/agent/marker") << "state";
    auto in2 = aptInstall(v2);
    REQUIRE_MESSAGE(in2.rc == 0, in2.text);
    auto ver = runCapture({"dpkg-query", "-W", "-f=${Version}", "outrider"}, scratch);
    CHECK(ver.text == "0.1.0+upgrade1");
    std::ifstream conf("/etc/outrider/agent.toml");
    std::stringstream ss;
    ss << conf.rdbuf();
    CHECK(ss.str().find("# edited on site") != std::string::npos);
    CHECK(fs::exists("/var/lib/outrider/agent/marker"));
    CHECK(ownerOf("/var/lib/outrider/agent").user == "outrider");
  }

  {
    // Purge: nothing of the packages, their state or their user is left.
    auto p = runCapture({"dpkg", "--purge", "outrider", "outrider-ctl"}, scratch);
    REQUIRE_MESSAGE(p.rc == 0, p.text);
    std::istringstream in(listed.text);
    for (std::string path; std::getline(in, path);) {
      if (path.empty() || path == "/." || fs::is_directory(path)) continue;  // shared dirs (/usr/sbin) stay
      CHECK_MESSAGE(!fs::exists(path), path << " is left after purge");
    }
    for (const char* d : {"/etc/outrider", "/var/lib/outrider", "/var/log/outrider", "/run/outrider",
                          "/usr/libexec/outrider"})
      CHECK_MESSAGE(!fs::exists(d), d << " is left after purge");
    CHECK(::getpwnam("outrider") == nullptr);
    CHECK(::getgrnam("outrider") == nullptr);
  }
}
