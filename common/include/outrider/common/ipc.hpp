#pragma once
// Local IPC between the agent and vmm/netd: length-prefixed protobuf frames (4-byte big-endian length,
// then one outrider.v1.LocalFrame) over a unix stream socket. The server checks each peer with
// SO_PEERCRED; requests carry an id and get exactly one reply with the same id; subscribers also get
// pushed LocalEvents. Everything runs on the caller's io_context (no threads).
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
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
  /// Next whole frame, if any. Returns Error once the stream is bad (and on every call after that).
  Result<std::optional<outrider::v1::LocalFrame>> next();
  /// Bytes fed but not yet taken out as frames.
  std::size_t buffered() const { return buf_.size() - off_; }

 private:
  std::string buf_;
  std::size_t off_ = 0;
  bool bad_ = false;
  std::string why_;
};

struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups of the peer process (see supplementaryGroups)
};

/// Who may connect: root, the daemon's own uid, members of `group` (by primary or supplementary gid of
/// the peer process), and the uids in `extraUids`.
struct AccessPolicy {
  std::optional<gid_t> group;  // e.g. the gid of "outrider"
  std::vector<uid_t> extraUids;
  bool allows(const PeerCred& peer) const;
};

/// The gids on the "Groups:" line of /proc/PID/status text.
std::vector<gid_t> parseStatusGroups(std::string_view statusText);
/// Supplementary groups of a running process, read from /proc/PID/status.
Result<std::vector<gid_t>> supplementaryGroups(pid_t pid);

struct ServerOptions {
  std::filesystem::path socketPath;  // its directory is created if missing; a stale socket is replaced
  unsigned mode = 0660;
  std::optional<gid_t> socketGroup;  // chown the socket to this group
  AccessPolicy access;
  std::size_t maxClients = 16;
  /// A connection whose unsent replies and events exceed this is closed (a stuck subscriber must not
  /// make the daemon buffer without bound); the client reconnects and re-subscribes.
  std::size_t maxQueuedBytes = 4u << 20;
};

/// Completes one request. The server sets the reply's id to the request's; calls after the first, or
/// after the connection closed, are ignored.
using Replier = std::function<void(outrider::v1::LocalReply)>;

/// Handler for one request; it must call `reply` exactly once (possibly later, from the loop).
/// SubscribeRequest never reaches it: the server answers that itself, since only it knows connections.
using RequestHandler =
    std::function<void(const PeerCred& peer, const outrider::v1::LocalRequest& req, Replier reply)>;

/// A reply carrying only an error.
outrider::v1::LocalReply errorReply(outrider::v1::LocalError::Code code, std::string message);

class Server {
 public:
  Server(boost::asio::io_context& io, ServerOptions opts, RequestHandler handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  /// Bind and listen. Fails if another live server listens on the path, or on any socket error.
  Status start();
  /// Close the acceptor and every connection, and unlink the socket path. Idempotent.
  void stop();
  /// Push an event to every connection that sent a SubscribeRequest.
  void publish(const outrider::v1::LocalEvent& ev);
  std::size_t clientCount() const;
  std::size_t subscriberCount() const;
  const std::filesystem::path& socketPath() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

/// A client that (re)connects on demand. Calls complete on the io_context, never inside call(); a
/// request that gets no reply within its timeout, or whose connection drops or cannot be made,
/// completes with an Error. While it has subscribers it also reconnects by itself (with backoff) after
/// a drop, and re-subscribes on every new connection before sending anything else.
class Client {
 public:
  using ReplyFn = std::function<void(Result<outrider::v1::LocalReply>)>;
  using EventFn = std::function<void(const outrider::v1::LocalEvent&)>;

  Client(boost::asio::io_context& io, std::filesystem::path socketPath);
  /// Pending calls are dropped without completing.
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  /// `req.id` is assigned by the client.
  void call(outrider::v1::LocalRequest req, std::chrono::milliseconds timeout, ReplyFn done);
  /// Subscribe to events; re-subscribes by itself after a reconnect.
  void subscribe(EventFn fn);
  /// Disconnect; pending calls complete with an Error. A later call() connects again.
  void close();
  bool connected() const;
  const std::filesystem::path& socketPath() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace outrider::ipc
