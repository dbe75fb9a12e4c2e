#include <arpa/inet.h>
#include <netinet/icmp6.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include "outrider/common/log.hpp"
#include "outrider/netd/prober.hpp"

namespace outrider::netd {

namespace {

using Clock = std::chrono::steady_clock;

std::uint16_t checksum(const std::uint8_t* data, std::size_t len) {
  std::uint32_t sum = 0;
  for (std::size_t i = 0; i + 1 < len; i += 2) sum += static_cast<std::uint32_t>(data[i] << 8 | data[i + 1]);
  if (len & 1) sum += static_cast<std::uint32_t>(data[len - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<std::uint16_t>(~sum);
}

/// Whether net.ipv4.ping_group_range admits `gid`.
bool pingGroupAllows(gid_t gid) {
  std::ifstream in("/proc/sys/net/ipv4/ping_group_range");
  long lo = 1, hi = 0;
  if (!(in >> lo >> hi)) return false;
  return static_cast<long>(gid) >= lo && static_cast<long>(gid) <= hi;
}

struct Pending {
  Clock::time_point sent;
  std::unique_ptr<boost::asio::steady_timer> timer;
  std::function<void(ProbeResult)> done;
};

/// One socket per (interface, address).
struct Target : std::enable_shared_from_this<Target> {
  Target(boost::asio::io_context& io) : sd(io) {}
  boost::asio::posix::stream_descriptor sd;
  int family = AF_INET;
  bool raw = false;
  std::uint16_t id = 0;
  std::uint16_t seq = 0;
  std::array<std::uint8_t, 16> addr{};
  std::map<std::uint16_t, Pending> pending;
  bool reading = false;

  void finish(std::uint16_t s, ProbeResult r) {
    auto it = pending.find(s);
    if (it == pending.end()) return;
    auto done = std::move(it->second.done);
    if (it->second.timer) it->second.timer->cancel();
    pending.erase(it);
    done(std::move(r));
  }

  void read() {
    if (reading) return;
    reading = true;
    sd.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                  [self = shared_from_this()](const boost::system::error_code& ec) {
                    self->reading = false;
                    if (ec) return;
                    self->drain();
                    if (!self->pending.empty() && self->sd.is_open()) self->read();
                  });
  }

  void drain() {
    std::uint8_t buf[1500];
    for (;;) {
      sockaddr_storage from{};
      socklen_t fl = sizeof from;
      ssize_t n = ::recvfrom(sd.native_handle(), buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &fl);
      if (n < 0) return;
      const std::uint8_t* icmp = buf;
      std::size_t len = static_cast<std::size_t>(n);
      if (family == AF_INET) {
        if (from.ss_family != AF_INET ||
            std::memcmp(&reinterpret_cast<sockaddr_in*>(&from)->sin_addr, addr.data(), 4) != 0)
          continue;
        if (raw) {
          if (len < 20) continue;
          std::size_t ihl = static_cast<std::size_t>(buf[0] & 0x0f) * 4;
          if (len < ihl + 8) continue;
          icmp += ihl;
          len -= ihl;
        }
        if (len < 8 || icmp[0] != ICMP_ECHOREPLY) continue;
      } else {
        if (from.ss_family != AF_INET6 ||
            std::memcmp(&reinterpret_cast<sockaddr_in6*>(&from)->sin6_addr, addr.data(), 16) != 0)
          continue;
        if (len < 8 || icmp[0] != ICMP6_ECHO_REPLY) continue;
      }
      std::uint16_t rid = static_cast<std::uint16_t>(icmp[4] << 8 | icmp[5]);
      std::uint16_t rseq = static_cast<std::uint16_t>(icmp[6] << 8 | icmp[7]);
      if (raw && rid != id) continue;  // datagram sockets: the kernel matches the id for us
      auto it = pending.find(rseq);
      if (it == pending.end()) continue;
      auto rtt = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - it->second.sent).count();
      finish(rseq, ProbeResult{true, static_cast<std::uint32_t>(std::max<long long>(rtt, 1)), {}});
    }
  }

  void close() {
    boost::system::error_code ec;
    sd.close(ec);
    for (auto& [s, p] : pending)
      if (p.timer) p.timer->cancel();
    pending.clear();
  }
};

class IcmpProber final : public Prober {
 public:
  explicit IcmpProber(boost::asio::io_context& io) : io_(io), rng_(std::random_device{}()) {
    dgramAllowed_ = pingGroupAllows(::getegid());
    if (!dgramAllowed_)
      note_ = "net.ipv4.ping_group_range does not include gid " + std::to_string(::getegid()) +
              ", so probes need a raw ICMP socket (CAP_NET_RAW)";
  }
  ~IcmpProber() override {
    for (auto& [k, t] : targets_) t->close();
  }

  void probe(const std::string& ifname, const std::string& address, std::chrono::milliseconds timeout,
             std::function<void(ProbeResult)> done) override {
    auto key = ifname + "|" + address;
    auto it = targets_.find(key);
    if (it == targets_.end()) {
      auto t = open(ifname, address);
      if (!t.second.empty()) {
        boost::asio::post(io_, [done = std::move(done), why = t.second] { done(ProbeResult{false, 0, why}); });
        return;
      }
      it = targets_.emplace(key, t.first).first;
    }
    auto t = it->second;
    std::uint16_t seq = ++t->seq;
    std::uint8_t pkt[16] = {};
    pkt[0] = t->family == AF_INET ? ICMP_ECHO : ICMP6_ECHO_REQUEST;
    pkt[4] = static_cast<std::uint8_t>(t->id >> 8);
    pkt[5] = static_cast<std::uint8_t>(t->id);
    pkt[6] = static_cast<std::uint8_t>(seq >> 8);
    pkt[7] = static_cast<std::uint8_t>(seq);
    std::memcpy(pkt + 8, "outrider", 8);
    if (t->family == AF_INET && t->raw) {
      auto c = checksum(pkt, sizeof pkt);
      pkt[2] = static_cast<std::uint8_t>(c >> 8);
      pkt[3] = static_cast<std::uint8_t>(c);
    }
    sockaddr_storage to{};
    socklen_t tl = 0;
    if (t->family == AF_INET) {
      auto* sin = reinterpret_cast<sockaddr_in*>(&to);
      sin->sin_family = AF_INET;
      std::memcpy(&sin->sin_addr, t->addr.data(), 4);
      tl = sizeof(sockaddr_in);
    } else {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&to);
      sin6->sin6_family = AF_INET6;
      std::memcpy(&sin6->sin6_addr, t->addr.data(), 16);
      tl = sizeof(sockaddr_in6);
    }
    auto& p = t->pending[seq];
    p.sent = Clock::now();
    p.done = std::move(done);
    if (::sendto(t->sd.native_handle(), pkt, sizeof pkt, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&to), tl) < 0) {
      int err = errno;
      // The interface may have been recreated under the bound socket: make a new one next time.
      auto cb = std::move(p.done);
      t->pending.erase(seq);
      t->close();
      targets_.erase(key);
      boost::asio::post(io_, [cb = std::move(cb), err, address] {
        cb(ProbeResult{false, 0, "send to " + address + ": " + std::strerror(err)});
      });
      return;
    }
    p.timer = std::make_unique<boost::asio::steady_timer>(io_, timeout);
    p.timer->async_wait([w = std::weak_ptr<Target>(t), seq](const boost::system::error_code& ec) {
      if (ec) return;
      if (auto tt = w.lock()) tt->finish(seq, ProbeResult{false, 0, {}});
    });
    t->read();
  }

  void reset(const std::string& ifname) override {
    for (auto it = targets_.begin(); it != targets_.end();) {
      if (it->first.rfind(ifname + "|", 0) == 0) {
        it->second->close();
        it = targets_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::string note() const override { return note_; }

 private:
  /// A socket for (ifname, address), or the reason there is none.
  std::pair<std::shared_ptr<Target>, std::string> open(const std::string& ifname, const std::string& address) {
    auto t = std::make_shared<Target>(io_);
    if (::inet_pton(AF_INET, address.c_str(), t->addr.data()) == 1)
      t->family = AF_INET;
    else if (::inet_pton(AF_INET6, address.c_str(), t->addr.data()) == 1)
      t->family = AF_INET6;
    else
      return {nullptr, "'" + address + "' is not an IP address"};
    int proto = t->family == AF_INET ? static_cast<int>(IPPROTO_ICMP) : static_cast<int>(IPPROTO_ICMPV6);
    int fd = -1;
    if (dgramAllowed_) fd = ::socket(t->family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
    if (fd < 0) {
      fd = ::socket(t->family, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
      if (fd < 0) {
        int err = errno;
        if (!warned_) {
          LOG_ERR("hub probes: cannot open an ICMP socket ({}); {}", std::strerror(err),
                  note_.empty() ? std::string("check net.ipv4.ping_group_range") : note_);
          warned_ = true;
        }
        return {nullptr, std::string("no ICMP socket: ") + std::strerror(err)};
      }
      t->raw = true;
    }
    t->sd.assign(fd);
    if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(), static_cast<socklen_t>(ifname.size())) != 0) {
      int err = errno;
      t->close();
      return {nullptr, "bind probe socket to " + ifname + ": " + std::strerror(err)};
    }
    t->id = static_cast<std::uint16_t>(rng_());
    t->seq = static_cast<std::uint16_t>(rng_());
    if (t->raw && t->family == AF_INET6) {
      icmp6_filter f;
      ICMP6_FILTER_SETBLOCKALL(&f);
      ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f);
      ::setsockopt(fd, IPPROTO_ICMPV6, ICMP6_FILTER, &f, sizeof f);
    }
    return {t, {}};
  }

  boost::asio::io_context& io_;
  std::mt19937 rng_;
  bool dgramAllowed_ = false;
  bool warned_ = false;
  std::string note_;
  std::map<std::string, std::shared_ptr<Target>> targets_;
};

}  // namespace

std::unique_ptr<Prober> makeIcmpProber(boost::asio::io_context& io) { return std::make_unique<IcmpProber>(io); }

}  // namespace outrider::netd
