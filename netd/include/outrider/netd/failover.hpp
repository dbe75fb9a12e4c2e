#pragma once
// The ring of hubs of one tunnel and the decisions about them, with no I/O: probe results and fresh
// handshakes go in (with the time), which hub should be active and which are kept warm come out.
//
// Ring order is lowest tier first, then config order. A hub is down after `missThreshold` consecutive
// missed probes; a successful probe or a fresh handshake makes it healthy again. When the active hub is
// down, the next healthy hub in ring order takes over at once (failover). A hub of a better tier than
// the active one takes over only once it has been healthy for `holddownMs` (fail-back, no flapping).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace outrider::netd {

struct HubHealth {
  std::uint32_t misses = 0;        // consecutive
  bool healthy = false;            // answered since it was last down (unknown counts as not healthy)
  bool down = false;               // misses reached the threshold
  std::int64_t healthySinceMs = 0; // 0 while not healthy
  std::uint32_t rttUs = 0;         // last successful probe
};

class FailoverPolicy {
 public:
  struct Hub {
    std::string name;
    std::uint32_t tier = 0;
  };
  enum class Change { none, becameHealthy, becameDown };

  FailoverPolicy(std::vector<Hub> hubs, std::uint32_t missThreshold, std::int64_t holddownMs, std::uint32_t standbys);

  /// Hub indices (config order) sorted into ring order.
  const std::vector<std::size_t>& ring() const { return ring_; }
  const Hub& hub(std::size_t i) const { return hubs_[i]; }
  const HubHealth& health(std::size_t i) const { return health_[i]; }
  std::size_t size() const { return hubs_.size(); }

  Change probeOk(std::size_t hub, std::uint32_t rttUs, std::int64_t nowMs);
  Change probeMissed(std::size_t hub, std::int64_t nowMs);
  /// The hub's last handshake changed: a recovery signal, like a successful probe without an RTT.
  Change handshake(std::size_t hub, std::int64_t nowMs);
  /// Forget all health (a recreated device): every hub is unknown again.
  void resetHealth();

  struct Decision {
    std::optional<std::size_t> active;
    bool changed = false;
    std::string why;  // "home missed 3 probes", "home (tier 0) healthy for 30 s"
  };
  /// Which hub should own the allowed IPs now, given the one that does.
  Decision decide(std::optional<std::size_t> current, std::int64_t nowMs) const;

  /// Hubs configured as peers and probed while `active` is active: the active hub, the next `standbys`
  /// hubs in ring order that are not down, every hub ahead of the active one in ring order (fail-back
  /// candidates), and every hub that is down (so its recovery is seen). In ring order.
  std::vector<std::size_t> warm(std::optional<std::size_t> active) const;
  /// "active", "standby" (warm), "down" or "idle" (not configured).
  std::string role(std::size_t hub, std::optional<std::size_t> active) const;

 private:
  std::vector<Hub> hubs_;
  std::vector<HubHealth> health_;
  std::vector<std::size_t> ring_;
  std::uint32_t missThreshold_;
  std::int64_t holddownMs_;
  std::uint32_t standbys_;
};

}  // namespace outrider::netd
