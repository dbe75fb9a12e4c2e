#include "support/netns_fixture.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace outrider::test {

namespace fs = std::filesystem;

namespace {

const fs::path kUapiDir = "/var/run/wireguard";

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

/// The pid of the process listening on a unix socket, or -1.
pid_t socketOwner(const fs::path& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  pid_t pid = -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) pid = cred.pid;
  }
  ::close(fd);
  return pid;
}

bool alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

}  // namespace

NetnsLab::NetnsLab(int hubs) {
  // netd leaves its wireguard-go running when it exits; as a subreaper this process inherits it and can
  // reap it after ending it (the host's PID 1 may not reap anything).
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  tag_ = std::to_string(::getpid());
  edgeNs_ = "otr" + tag_ + "e";
  edgeIf_ = "oe" + tag_;
  try {
    must({"ip", "netns", "add", edgeNs_});
    namespaces_.push_back(edgeNs_);
    must({"ip", "-n", edgeNs_, "link", "set", "lo", "up"});
    edgeKeyFile_ = dir_ / "state" / "wg.key";
    fs::create_directories(edgeKeyFile_.parent_path());
    fs::permissions(edgeKeyFile_.parent_path(), fs::perms::owner_all, fs::perm_options::replace);
    std::string priv = trim(capture({"wg", "genkey"}));
    { std::ofstream(edgeKeyFile_) << priv << "\n"; }
    fs::permissions(edgeKeyFile_, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
    edgePublicKey_ = trim(capture({"sh", "-c", "wg pubkey < " + edgeKeyFile_.string()}));
    for (int h = 1; h <= hubs; ++h) {
      Hub hub;
      hub.index = h;
      hub.ns = "otr" + tag_ + "h" + std::to_string(h);
      hub.ifname = "oh" + tag_ + "x" + std::to_string(h);
      hub.vethEdge = "ov" + tag_ + "e" + std::to_string(h);
      hub.vethHub = "ov" + tag_ + "h" + std::to_string(h);
      hub.endpoint = "10.99." + std::to_string(h) + ".2:51820";
      hub.probeAddress = "10.99.100." + std::to_string(h);
      hub.keyFile = dir_ / ("hub" + std::to_string(h) + ".key");
      std::string hp = trim(capture({"wg", "genkey"}));
      { std::ofstream(hub.keyFile) << hp << "\n"; }
      hub.publicKey = trim(capture({"sh", "-c", "wg pubkey < " + hub.keyFile.string()}));
      must({"ip", "netns", "add", hub.ns});
      namespaces_.push_back(hub.ns);
      must({"ip", "-n", hub.ns, "link", "set", "lo", "up"});
      must({"ip", "link", "add", hub.vethEdge, "netns", edgeNs_, "type", "veth", "peer", "name", hub.vethHub, "netns",
            hub.ns});
      std::string net = "10.99." + std::to_string(h) + ".";
      must({"ip", "-n", edgeNs_, "addr", "add", net + "1/24", "dev", hub.vethEdge});
      must({"ip", "-n", hub.ns, "addr", "add", net + "2/24", "dev", hub.vethHub});
      must({"ip", "-n", edgeNs_, "link", "set", hub.vethEdge, "up"});
      must({"ip", "-n", hub.ns, "link", "set", hub.vethHub, "up"});
      hubs_.push_back(std::move(hub));
    }
    for (int h = 1; h <= hubs; ++h)
      if (!startHub(h)) throw std::runtime_error("hub " + std::to_string(h) + " did not start:\n" + hubs_[h - 1].wg->log());
  } catch (...) {
    cleanup();
    throw;
  }
}

NetnsLab::~NetnsLab() { cleanup(); }

fs::path NetnsLab::uapiSocket(const std::string& ifname) const { return kUapiDir / (ifname + ".sock"); }

pid_t NetnsLab::uapiOwner(const std::string& ifname) const { return socketOwner(uapiSocket(ifname)); }

void NetnsLab::must(const std::vector<std::string>& argv) {
  int rc = run(argv, dir_ / "commands.log");
  if (rc != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += a + " ";
    throw std::runtime_error("lab command failed (" + std::to_string(rc) + "): " + cmd);
  }
}

std::string NetnsLab::capture(const std::vector<std::string>& argv, int* rc) {
  auto out = dir_ / "capture.out";
  fs::remove(out);
  // The command goes after the script's $0, so nothing in it is parsed by the shell.
  std::vector<std::string> full{"sh", "-c", "exec \"$@\" > '" + out.string() + "'", "sh"};
  full.insert(full.end(), argv.begin(), argv.end());
  int code = run(full, dir_ / "commands.log");
  if (rc) *rc = code;
  std::ifstream in(out);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> NetnsLab::inEdge(std::vector<std::string> argv) const {
  std::vector<std::string> full{"ip", "netns", "exec", edgeNs_};
  full.insert(full.end(), argv.begin(), argv.end());
  return full;
}

bool NetnsLab::startHub(int index) {
  auto& hub = this->hub(index);
  if (hub.wg) hub.wg->stop();
  hub.wg.reset();
  std::error_code ec;
  fs::remove(uapiSocket(hub.ifname), ec);  // a SIGKILLed wireguard-go leaves its socket behind
  hub.wg.emplace(std::vector<std::string>{"ip", "netns", "exec", hub.ns, "wireguard-go", "-f", hub.ifname},
                 dir_ / ("hub" + std::to_string(index) + ".log"));
  if (!waitFor([&] { return socketOwner(uapiSocket(hub.ifname)) > 0 || !hub.wg->running(); }, std::chrono::seconds(5)))
    return false;
  if (!hub.wg->running()) return false;
  try {
    must({"wg", "set", hub.ifname, "private-key", hub.keyFile.string(), "listen-port", "51820", "peer", edgePublicKey_,
          "allowed-ips", "10.99.100.10/32"});
    must({"ip", "-n", hub.ns, "addr", "add", "10.99.100." + std::to_string(index) + "/24", "dev", hub.ifname});
    must({"ip", "-n", hub.ns, "addr", "add", "10.99.200.1/32", "dev", hub.ifname});
    must({"ip", "-n", hub.ns, "link", "set", hub.ifname, "up"});
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

void NetnsLab::killHub(int index) {
  auto& hub = this->hub(index);
  if (!hub.wg) return;
  hub.wg->signal(SIGKILL);
  hub.wg->wait(std::chrono::seconds(5));
}

void NetnsLab::setHubLink(int index, bool up) {
  auto& hub = this->hub(index);
  must({"ip", "-n", hub.ns, "link", "set", hub.vethHub, up ? "up" : "down"});
}

bool NetnsLab::ping(const std::string& address) {
  return run(inEdge({"ping", "-n", "-q", "-c", "1", "-W", "1", address}), dir_ / "ping.log") == 0;
}

bool NetnsLab::pingWithin(const std::string& address, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    if (ping(address)) return true;
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

std::string NetnsLab::tunnelToml(int probeIntervalMs, int missThreshold, int holddownS, int standbys,
                                 std::vector<int> tiers) const {
  std::ostringstream t;
  t << "[[tunnel]]\n"
    << "interface = \"" << edgeIf_ << "\"\n"
    << "addresses = [\"10.99.100.10/24\"]\n"
    << "keepalive_s = 1\n"
    << "probe_interval_ms = " << probeIntervalMs << "\n"
    << "miss_threshold = " << missThreshold << "\n"
    << "holddown_s = " << holddownS << "\n"
    << "standbys = " << standbys << "\n";
  for (const auto& h : hubs_) {
    t << "  [[tunnel.hub]]\n"
      << "  name = \"hub" << h.index << "\"\n"
      << "  endpoint = \"" << h.endpoint << "\"\n"
      << "  public_key = \"" << h.publicKey << "\"\n"
      << "  allowed_ips = [\"10.99.200.0/24\"]\n"
      << "  tier = " << (static_cast<std::size_t>(h.index - 1) < tiers.size() ? tiers[static_cast<std::size_t>(h.index - 1)] : 0) << "\n"
      << "  probe_address = \"" << h.probeAddress << "\"\n";
  }
  return t.str();
}

Process NetnsLab::startNetd(const std::string& extraToml, const std::string& logName) {
  {
    std::ofstream cfg(netdConfig(), std::ios::trunc);
    cfg << "[api]\nsocket = \"" << netdSocket().string() << "\"\n"
        << "[log]\nlevel = \"debug\"\n"
        << "[wireguard]\nkey_file = \"" << edgeKeyFile_.string() << "\"\n"
        << "state_dir = \"" << stateDir().string() << "\"\n"
        << "backend = \"userspace\"\n"
        << extraToml;
  }
  return Process(inEdge({binary("outrider-netd").string(), "--config", netdConfig().string()}), dir_ / logName);
}

void NetnsLab::cleanup() {
  // The edge's wireguard-go was started by netd (which leaves tunnels up when it stops): find it by the
  // PID behind its UAPI socket, never by name.
  pid_t edge = socketOwner(uapiSocket(edgeIf_));
  if (edge > 0) {
    ::kill(edge, SIGTERM);
    waitFor([&] { ::waitpid(edge, nullptr, WNOHANG); return !alive(edge); }, std::chrono::seconds(5));
    if (alive(edge)) ::kill(edge, SIGKILL);
    ::waitpid(edge, nullptr, 0);  // reaps it when it is ours (see the subreaper above); ECHILD at once otherwise
  }
  for (auto& h : hubs_)
    if (h.wg) h.wg->stop();
  std::error_code ec;
  fs::remove(uapiSocket(edgeIf_), ec);
  for (auto& h : hubs_) fs::remove(uapiSocket(h.ifname), ec);
  for (auto it = namespaces_.rbegin(); it != namespaces_.rend(); ++it)
    run({"ip", "netns", "del", *it}, dir_ / "commands.log");
  namespaces_.clear();
}

}  // namespace outrider::test
