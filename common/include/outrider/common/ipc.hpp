#pragma once
// Local IPC between the agent and vmm/netd: length-prefixed protobuf frames (4-byte big-endian length,
// then one outrider.v1.LocalFrame) over a unix stream socket. The server checks each peer with
// SO_PEERCRED; requests carry an id and get exactly one reply with the same id; subscribers also get
// pushed LocalEvents. Everything runs on the caller's io_context.
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <sys/types.h>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/v1/local.pb.h"

namespace outrider::ipc {

inline constexpr std::uint32_t kMaxFrameBytes = 1u << 20;  // 1 MiB

/// Encode a frame as length prefix + payload.
std::string encodeFrame(const outrider::v1::LocalFrame& frame);

/// Incremental decoder: feed bytes, take whole frames out. A length over kMaxFrameBytes or a payload
/// that does not parse makes the stream bad (the connection is closed; nothing else is affected).
class FrameDecoder {
 public:
  void feed(const char* data, std::size_t n);
  /// Next whole frame, if any. Returns Error once the stream is bad.
  Result<std::optional<outrider::v1::LocalFrame>> next();

 private:
  std::string buf_;
  std::size_t off_ = 0;
  bool bad_ = false;
};

struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

/// Who may connect: root, the daemon's own uid, and members of `group` (by primary or supplementary
/// gid of the peer process).
struct AccessPolicy {
  std::optional<gid_t> group;  // e.g. the gid of "outrider"
  std::vector<uid_t> extraUids;
  bool allows(const PeerCred& peer) const;
};

struct ServerOptions {
  std::filesystem::path socketPath;  // its directory is created if missing; a stale socket is replaced
  unsigned mode = 0660;
  std::optional<gid_t> socketGroup;  // chown the socket to this group
  AccessPolicy access;
  std::size_t maxClients = 16;
};

/// Handler for one request; it must call `reply` exactly once (possibly later, from the loop).
using RequestHandler =
    std::function<void(const PeerCred& peer, const outrider::v1::LocalRequest& req,
                       std::function<void(outrider::v1::LocalReply)> reply)>;

class Server {
 public:
  Server(boost::asio::io_context& io, ServerOptions opts, RequestHandler handler);
  ~Server();
  Status start();
  void stop();
  /// Push an event to every connection that sent a SubscribeRequest.
  void publish(const outrider::v1::LocalEvent& ev);
  std::size_t clientCount() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

/// A client that (re)connects on demand. Calls complete on the io_context; a request that gets no reply
/// within its timeout, or whose connection drops, completes with an Error.
class Client {
 public:
  using ReplyFn = std::function<void(Result<outrider::v1::LocalReply>)>;
  using EventFn = std::function<void(const outrider::v1::LocalEvent&)>;

  Client(boost::asio::io_context& io, std::filesystem::path socketPath);
  ~Client();
  /// `req.id` is assigned by the client.
  void call(outrider::v1::LocalRequest req, std::chrono::milliseconds timeout, ReplyFn done);
  /// Subscribe to events; re-subscribes by itself after a reconnect.
  void subscribe(EventFn fn);
  void close();
  const std::filesystem::path& socketPath() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace outrider::ipc
