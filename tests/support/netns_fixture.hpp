#pragma once
// A small WireGuard lab in network namespaces, made and removed by the test itself: an edge namespace
// and N hub namespaces, each hub joined to the edge by a veth pair (10.99.H.1 edge, 10.99.H.2 hub), each
// hub running wireguard-go (configured with `wg`) with tunnel address 10.99.100.H/24 and the service
// address 10.99.200.1/32 behind it. Names carry the test's pid, so runs never collide (wireguard-go's
// UAPI sockets live in one directory for the whole host). All traffic stays inside these namespaces.
// The destructor ends every process the lab started (by PID), the edge's wireguard-go (found by the
// PID behind its UAPI socket), and deletes the namespaces — also when a check failed.
#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "support/process.hpp"

namespace outrider::test {

class NetnsLab {
 public:
  struct Hub {
    int index = 0;                // 1-based
    std::string ns, ifname, vethEdge, vethHub;
    std::filesystem::path keyFile;
    std::string publicKey;        // base64
    std::string endpoint;         // "10.99.H.2:51820"
    std::string probeAddress;     // "10.99.100.H"
    std::optional<Process> wg;
  };

  /// Throws std::runtime_error (with the failing command) if the lab cannot be built.
  explicit NetnsLab(int hubs = 3);
  ~NetnsLab();
  NetnsLab(const NetnsLab&) = delete;
  NetnsLab& operator=(const NetnsLab&) = delete;

  const std::string& edgeNs() const { return edgeNs_; }
  /// The tunnel interface netd will make in the edge namespace.
  const std::string& edgeIf() const { return edgeIf_; }
  const TempDir& dir() const { return dir_; }
  /// The edge's private key file (made here, so the hubs can know the edge's public key up front).
  const std::filesystem::path& edgeKeyFile() const { return edgeKeyFile_; }
  const std::string& edgePublicKey() const { return edgePublicKey_; }
  Hub& hub(int index) { return hubs_.at(static_cast<std::size_t>(index - 1)); }
  std::filesystem::path uapiSocket(const std::string& ifname) const;
  /// The pid of the wireguard-go serving `ifname` (SO_PEERCRED on its UAPI socket), or -1.
  pid_t uapiOwner(const std::string& ifname) const;

  /// Start (or restart) hub H's wireguard-go and configure it; false with the log on failure.
  bool startHub(int index);
  /// SIGKILL hub H's wireguard-go (its tunnel vanishes at once).
  void killHub(int index);
  /// Take hub H's veth (hub side) down or up.
  void setHubLink(int index, bool up);

  /// One ICMP echo from the edge namespace to `address`, waiting at most 1 s.
  bool ping(const std::string& address);
  /// Ping until one succeeds or `timeout` passes; true if one did.
  bool pingWithin(const std::string& address, std::chrono::milliseconds timeout);
  /// Run a command to completion and return its stdout ("" and a failed CHECK-able code in `rc`).
  std::string capture(const std::vector<std::string>& argv, int* rc = nullptr);
  /// Run inside the edge namespace.
  std::vector<std::string> inEdge(std::vector<std::string> argv) const;

  /// A [[tunnel]] table for these hubs (all carry 10.99.200.0/24).
  std::string tunnelToml(int probeIntervalMs, int missThreshold, int holddownS, int standbys,
                         std::vector<int> tiers) const;

  /// Start outrider-netd in the edge namespace with `toml` as its config (key file, state dir and socket
  /// in the lab's directory are added in front).
  Process startNetd(const std::string& extraToml, const std::string& logName = "netd.log");
  std::filesystem::path netdSocket() const { return dir_ / "netd.sock"; }
  std::filesystem::path netdConfig() const { return dir_ / "netd.toml"; }
  std::filesystem::path stateDir() const { return dir_ / "state"; }

 private:
  void must(const std::vector<std::string>& argv);
  void cleanup();

  TempDir dir_{"netns"};
  std::string tag_, edgeNs_, edgeIf_, edgePublicKey_;
  std::filesystem::path edgeKeyFile_;
  std::vector<Hub> hubs_;
  std::vector<std::string> namespaces_;
};

}  // namespace outrider::test
