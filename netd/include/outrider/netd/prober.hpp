#pragma once
// Hub health probes through the tunnel: ICMP echo to a hub's probe address, sent out of the tunnel
// interface. An interface so the failover logic can be tested with scripted results.
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace outrider::netd {

struct ProbeResult {
  bool ok = false;
  std::uint32_t rttUs = 0;
  std::string error;  // why a probe could not even be sent
};

class Prober {
 public:
  virtual ~Prober() = default;
  /// Send one echo to `address` out of `ifname`. `done` is called exactly once, from the loop (or, in
  /// fakes, at once): with the reply, or as a miss after `timeout`.
  virtual void probe(const std::string& ifname, const std::string& address, std::chrono::milliseconds timeout,
                     std::function<void(ProbeResult)> done) = 0;
  /// Drop the sockets and outstanding probes of `ifname` (its device was recreated or removed); their
  /// callbacks are not called.
  virtual void reset(const std::string& ifname) = 0;
  /// A remark for the health detail about how probes are sent ("" when all is as expected).
  virtual std::string note() const = 0;
};

/// ICMP echo over an unprivileged ICMP datagram socket when net.ipv4.ping_group_range includes the
/// process's group, else over a raw socket (needs CAP_NET_RAW). Each socket is bound to its interface.
std::unique_ptr<Prober> makeIcmpProber(boost::asio::io_context& io);

}  // namespace outrider::netd
