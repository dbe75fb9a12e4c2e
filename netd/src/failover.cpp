#include "outrider/netd/failover.hpp"

#include <algorithm>
#include <numeric>

namespace outrider::netd {

FailoverPolicy::FailoverPolicy(std::vector<Hub> hubs, std::uint32_t missThreshold, std::int64_t holddownMs,
                               std::uint32_t standbys)
    : hubs_(std::move(hubs)),
      health_(hubs_.size()),
      ring_(hubs_.size()),
      missThreshold_(std::max<std::uint32_t>(missThreshold, 1)),
      holddownMs_(holddownMs),
      standbys_(standbys) {
  std::iota(ring_.begin(), ring_.end(), std::size_t{0});
  std::stable_sort(ring_.begin(), ring_.end(), [&](std::size_t a, std::size_t b) { return hubs_[a].tier < hubs_[b].tier; });
}

FailoverPolicy::Change FailoverPolicy::probeOk(std::size_t i, std::uint32_t rttUs, std::int64_t nowMs) {
  auto& h = health_[i];
  h.misses = 0;
  if (rttUs) h.rttUs = rttUs;
  if (h.healthy) return Change::none;
  h.healthy = true;
  h.down = false;
  h.healthySinceMs = nowMs;
  return Change::becameHealthy;
}

FailoverPolicy::Change FailoverPolicy::handshake(std::size_t i, std::int64_t nowMs) { return probeOk(i, 0, nowMs); }

FailoverPolicy::Change FailoverPolicy::probeMissed(std::size_t i, std::int64_t) {
  auto& h = health_[i];
  ++h.misses;
  if (h.misses < missThreshold_ || h.down) return Change::none;
  h.down = true;
  h.healthy = false;
  h.healthySinceMs = 0;
  return Change::becameDown;
}

void FailoverPolicy::resetHealth() {
  for (auto& h : health_) h = HubHealth{};
}

FailoverPolicy::Decision FailoverPolicy::decide(std::optional<std::size_t> current, std::int64_t nowMs) const {
  Decision d;
  d.active = current;
  auto pick = [&](bool needHealthy) -> std::optional<std::size_t> {
    for (auto i : ring_) {
      if (current && i == *current) continue;
      const auto& h = health_[i];
      if (h.down) continue;
      if (needHealthy && !h.healthy) continue;
      return i;
    }
    return std::nullopt;
  };
  if (!current) {
    // Nothing active yet: the first hub in ring order that is not known to be down, healthy ones first.
    auto c = pick(true);
    if (!c) c = pick(false);
    if (c) {
      d.active = c;
      d.changed = true;
      d.why = "initial choice";
    }
    return d;
  }
  const auto& cur = health_[*current];
  if (cur.down) {
    auto c = pick(true);
    if (!c) c = pick(false);
    if (c) {
      d.active = c;
      d.changed = true;
      d.why = hubs_[*current].name + " missed " + std::to_string(cur.misses) + " probes";
    }
    return d;
  }
  // Fail-back: only to a better tier, and only after the hold-down.
  for (auto i : ring_) {
    if (hubs_[i].tier >= hubs_[*current].tier) break;
    const auto& h = health_[i];
    if (h.healthy && !h.down && h.misses == 0 && nowMs - h.healthySinceMs >= holddownMs_) {
      d.active = i;
      d.changed = true;
      d.why = hubs_[i].name + " (tier " + std::to_string(hubs_[i].tier) + ") healthy for " +
              std::to_string((nowMs - h.healthySinceMs) / 1000) + " s";
      return d;
    }
  }
  return d;
}

std::vector<std::size_t> FailoverPolicy::warm(std::optional<std::size_t> active) const {
  std::vector<std::size_t> out;
  std::uint32_t standbys = 0;
  bool passedActive = !active;
  for (auto i : ring_) {
    bool take = false;
    if (active && i == *active) {
      take = true;
      passedActive = true;
    } else if (health_[i].down || !passedActive) {
      take = true;
    } else if (standbys < standbys_) {
      take = true;
      ++standbys;
    }
    if (take) out.push_back(i);
  }
  // Standbys wrap around the ring: hubs ahead of the active one are already warm, so nothing to add.
  return out;
}

std::string FailoverPolicy::role(std::size_t i, std::optional<std::size_t> active) const {
  if (active && i == *active) return "active";
  if (health_[i].down) return "down";
  auto w = warm(active);
  if (std::find(w.begin(), w.end(), i) != w.end()) return "standby";
  return "idle";
}

}  // namespace outrider::netd
