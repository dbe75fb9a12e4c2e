#include "outrider/netd/uapi.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include "outrider/common/unique_fd.hpp"

namespace outrider::netd {

std::string encodeUapiSet(const WgDeviceConfig& cfg) {
  std::string out = "set=1\n";
  if (cfg.privateKey) out += "private_key=" + keyHex(*cfg.privateKey) + "\n";
  if (cfg.listenPort) out += "listen_port=" + std::to_string(*cfg.listenPort) + "\n";
  if (cfg.replacePeers) out += "replace_peers=true\n";
  for (const auto& p : cfg.peers) {
    out += "public_key=" + keyHex(p.publicKey) + "\n";
    if (p.remove) {
      out += "remove=true\n";
      continue;
    }
    if (p.updateOnly) out += "update_only=true\n";
    if (p.endpoint) out += "endpoint=" + p.endpoint->str() + "\n";
    if (p.keepaliveS) out += "persistent_keepalive_interval=" + std::to_string(*p.keepaliveS) + "\n";
    if (p.replaceAllowedIps) out += "replace_allowed_ips=true\n";
    for (const auto& a : p.allowedIps) out += "allowed_ip=" + a.str() + "\n";
  }
  out += "\n";
  return out;
}

namespace {

template <class T>
bool parseNum(std::string_view s, T& out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

}  // namespace

Status parseUapiErrno(std::string_view reply) {
  std::size_t pos = 0;
  while (pos < reply.size()) {
    auto nl = reply.find('\n', pos);
    auto line = reply.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? reply.size() : nl + 1;
    if (line.rfind("errno=", 0) != 0) continue;
    long e = 0;
    if (!parseNum(line.substr(6), e)) return Error{"UAPI reply has a malformed errno line '" + std::string(line) + "'", EPROTO};
    if (e == 0) return {};
    int code = static_cast<int>(e < 0 ? -e : e);
    return Error{"wireguard-go refused the request: " + std::string(std::strerror(code)) + " (errno=" +
                     std::to_string(e) + "; its log names the reason)",
                 code};
  }
  return Error{"UAPI reply without an errno line", EPROTO};
}

Result<WgDeviceState> decodeUapiGet(std::string_view reply) {
  if (auto st = parseUapiErrno(reply); !st) return st.error();
  WgDeviceState dev;
  WgPeerState* peer = nullptr;
  std::int64_t hsSec = 0, hsNsec = 0;
  auto flushHandshake = [&] {
    if (peer) peer->lastHandshakeMs = hsSec * 1000 + hsNsec / 1000000;
    hsSec = hsNsec = 0;
  };
  std::size_t pos = 0;
  while (pos < reply.size()) {
    auto nl = reply.find('\n', pos);
    auto line = reply.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? reply.size() : nl + 1;
    if (line.empty()) continue;
    auto eq = line.find('=');
    if (eq == std::string_view::npos) return Error{"UAPI get: malformed line '" + std::string(line) + "'", EPROTO};
    auto k = line.substr(0, eq);
    auto v = line.substr(eq + 1);
    auto bad = [&] { return Error{"UAPI get: bad value in '" + std::string(line) + "'", EPROTO}; };
    if (k == "errno") break;
    if (k == "public_key") {
      flushHandshake();
      auto key = keyFromHex(v);
      if (!key) return bad();
      dev.peers.push_back(WgPeerState{});
      peer = &dev.peers.back();
      peer->publicKey = *key;
    } else if (!peer) {
      if (k == "private_key") {
        auto key = keyFromHex(v);
        if (!key) return bad();
        dev.publicKey.reset();  // the caller derives it; only the private key is on the wire
      } else if (k == "listen_port") {
        if (!parseNum(v, dev.listenPort)) return bad();
      }
      // fwmark and unknown device keys: not used by netd.
    } else if (k == "endpoint") {
      auto ep = Endpoint::parse(v);
      if (!ep) return bad();
      peer->endpoint = *ep;
    } else if (k == "last_handshake_time_sec") {
      if (!parseNum(v, hsSec)) return bad();
    } else if (k == "last_handshake_time_nsec") {
      if (!parseNum(v, hsNsec)) return bad();
    } else if (k == "rx_bytes") {
      if (!parseNum(v, peer->rxBytes)) return bad();
    } else if (k == "tx_bytes") {
      if (!parseNum(v, peer->txBytes)) return bad();
    } else if (k == "persistent_keepalive_interval") {
      if (!parseNum(v, peer->keepaliveS)) return bad();
    } else if (k == "allowed_ip") {
      auto c = Cidr::parse(v);
      if (!c) return bad();
      peer->allowedIps.push_back(*c);
    }
    // preshared_key, protocol_version: not used.
  }
  flushHandshake();
  return dev;
}

namespace {

Status connectUnix(UniqueFd& s, const std::filesystem::path& path) {
  s.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return errnoError("socket", errno);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.native().size() >= sizeof addr.sun_path) return Error{"UAPI socket path too long: " + path.string(), ENAMETOOLONG};
  std::memcpy(addr.sun_path, path.c_str(), path.native().size());
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return errnoError("connect " + path.string(), errno);
  return {};
}

}  // namespace

Result<std::string> UapiClient::exchange(std::string_view request, std::chrono::milliseconds timeout) const {
  UniqueFd s;
  if (auto st = connectUnix(s, socket_); !st) return st.error();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(s.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errnoError("write " + socket_.string(), errno);
    sent += static_cast<std::size_t>(n);
  }
  std::string reply;
  char buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Error{"UAPI " + socket_.string() + ": no reply within " + std::to_string(timeout.count()) + " ms", ETIMEDOUT};
    pollfd p{s.get(), POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errnoError("poll " + socket_.string(), errno);
    if (r == 0) continue;
    ssize_t n = ::recv(s.get(), buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errnoError("read " + socket_.string(), errno);
    if (n == 0) return Error{"UAPI " + socket_.string() + ": connection closed without a complete reply", EPROTO};
    reply.append(buf, static_cast<std::size_t>(n));
    if (reply.size() >= 2 && reply.compare(reply.size() - 2, 2, "\n\n") == 0 &&
        reply.find("errno=") != std::string::npos)
      return reply;
    if (reply.size() > (16u << 20)) return Error{"UAPI reply too large", EPROTO};
  }
}

Status UapiClient::set(const WgDeviceConfig& cfg) const {
  auto r = exchange(encodeUapiSet(cfg));
  if (!r) return r.error();
  return parseUapiErrno(*r);
}

Result<WgDeviceState> UapiClient::get() const {
  auto r = exchange(kUapiGet);
  if (!r) return r.error();
  return decodeUapiGet(*r);
}

Result<pid_t> UapiClient::serverPid() const {
  UniqueFd s;
  if (auto st = connectUnix(s, socket_); !st) return st.error();
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(s.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return errnoError("SO_PEERCRED", errno);
  return cred.pid;
}

}  // namespace outrider::netd
