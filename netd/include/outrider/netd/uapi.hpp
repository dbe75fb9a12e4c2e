#pragma once
// wireguard-go's UAPI: a text protocol on a unix socket (<uapi_dir>/IFACE.sock). A request is
// "set=1\n" or "get=1\n" followed by key=value lines and a blank line; the reply ends with "errno=N\n\n".
// Keys are hex. A peer section starts at public_key=.
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"
#include "outrider/netd/wg_types.hpp"

namespace outrider::netd {

/// The whole "set=1" request, blank line included.
std::string encodeUapiSet(const WgDeviceConfig& cfg);
inline constexpr std::string_view kUapiGet = "get=1\n\n";
/// The errno line of a reply: ok for errno=0, an Error whose code is the (positive) errno otherwise, or
/// an Error for a reply without an errno line.
Status parseUapiErrno(std::string_view reply);
/// A "get=1" reply (including its errno line) into the device state.
Result<WgDeviceState> decodeUapiGet(std::string_view reply);

/// One connection per exchange, bounded by a timeout (the peer is a local process netd supervises).
class UapiClient {
 public:
  explicit UapiClient(std::filesystem::path socket) : socket_(std::move(socket)) {}
  /// Send `request`, read until the reply's blank line.
  Result<std::string> exchange(std::string_view request,
                               std::chrono::milliseconds timeout = std::chrono::milliseconds(2000)) const;
  Status set(const WgDeviceConfig& cfg) const;
  Result<WgDeviceState> get() const;
  /// The pid of the process serving the socket (SO_PEERCRED), if it answers a connect.
  Result<pid_t> serverPid() const;
  const std::filesystem::path& socket() const { return socket_; }

 private:
  std::filesystem::path socket_;
};

}  // namespace outrider::netd
