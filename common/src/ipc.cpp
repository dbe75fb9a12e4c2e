#include "outrider/common/ipc.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <sstream>

#include "outrider/common/log.hpp"
#include "outrider/common/unique_fd.hpp"

namespace outrider::ipc {

namespace asio = boost::asio;
using Stream = asio::local::stream_protocol;
using outrider::v1::LocalError;
using outrider::v1::LocalEvent;
using outrider::v1::LocalFrame;
using outrider::v1::LocalReply;
using outrider::v1::LocalRequest;

namespace {

constexpr std::size_t kHeaderBytes = 4;
constexpr std::size_t kReadChunk = 64 * 1024;

bool fitsSunPath(const std::filesystem::path& p) { return p.native().size() < sizeof(sockaddr_un::sun_path); }

// Owns a plain fd for the short-lived probe socket in Server::start.
}  // namespace

// ---------------------------------------------------------------------------------------------------
// Framing

std::string encodeFrame(const LocalFrame& frame) {
  std::string out(kHeaderBytes, '\0');
  frame.AppendToString(&out);
  auto n = static_cast<std::uint32_t>(out.size() - kHeaderBytes);
  out[0] = static_cast<char>((n >> 24) & 0xff);
  out[1] = static_cast<char>((n >> 16) & 0xff);
  out[2] = static_cast<char>((n >> 8) & 0xff);
  out[3] = static_cast<char>(n & 0xff);
  return out;
}

void FrameDecoder::feed(const char* data, std::size_t n) {
  if (bad_) return;
  // Drop consumed bytes before growing, so a long-lived connection does not keep every byte it read.
  if (off_ == buf_.size()) {
    buf_.clear();
    off_ = 0;
  } else if (off_ > kReadChunk && off_ * 2 > buf_.size()) {
    buf_.erase(0, off_);
    off_ = 0;
  }
  buf_.append(data, n);
}

Result<std::optional<LocalFrame>> FrameDecoder::next() {
  auto fail = [this](std::string why) -> Error {
    bad_ = true;
    why_ = std::move(why);
    buf_.clear();
    off_ = 0;
    return Error{why_};
  };
  if (bad_) return Error{why_};
  if (buffered() < kHeaderBytes) return std::optional<LocalFrame>{};
  const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + off_);
  std::uint32_t len = (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
  // Checked before waiting for the payload, so a peer cannot make us buffer an oversized frame.
  if (len > kMaxFrameBytes) return fail(fmt::format("frame of {} bytes exceeds the limit of {}", len, kMaxFrameBytes));
  if (buffered() < kHeaderBytes + len) return std::optional<LocalFrame>{};
  LocalFrame frame;
  if (!frame.ParseFromArray(buf_.data() + off_ + kHeaderBytes, static_cast<int>(len)))
    return fail(fmt::format("frame of {} bytes does not parse", len));
  // An empty frame (zero length, or only unknown fields) carries nothing a peer could act on; treating
  // it as a protocol error keeps the handlers free of "no kind" cases.
  if (frame.kind_case() == LocalFrame::KIND_NOT_SET) return fail("frame carries no request, reply or event");
  off_ += kHeaderBytes + len;
  return std::optional<LocalFrame>(std::move(frame));
}

// ---------------------------------------------------------------------------------------------------
// Access

bool AccessPolicy::allows(const PeerCred& peer) const {
  if (peer.uid == 0 || peer.uid == ::geteuid()) return true;
  if (std::find(extraUids.begin(), extraUids.end(), peer.uid) != extraUids.end()) return true;
  if (group) {
    if (peer.gid == *group) return true;
    if (std::find(peer.groups.begin(), peer.groups.end(), *group) != peer.groups.end()) return true;
  }
  return false;
}

std::vector<gid_t> parseStatusGroups(std::string_view text) {
  std::vector<gid_t> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    constexpr std::string_view kKey = "Groups:";
    if (line.substr(0, kKey.size()) != kKey) continue;
    line.remove_prefix(kKey.size());
    while (!line.empty()) {
      while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
      if (line.empty()) break;
      unsigned long v = 0;
      auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), v);
      if (ec != std::errc{}) break;  // malformed: keep what parsed, never guess
      out.push_back(static_cast<gid_t>(v));
      line.remove_prefix(static_cast<std::size_t>(end - line.data()));
    }
    break;
  }
  return out;
}

Result<std::vector<gid_t>> supplementaryGroups(pid_t pid) {
  std::string file = "/proc/" + std::to_string(pid) + "/status";
  std::ifstream in(file);
  if (!in) return errnoError("open " + file, errno);
  std::ostringstream ss;
  ss << in.rdbuf();
  return parseStatusGroups(ss.str());
}

LocalReply errorReply(LocalError::Code code, std::string message) {
  LocalReply r;
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(std::move(message));
  return r;
}

// ---------------------------------------------------------------------------------------------------
// Server

namespace {

struct Connection {
  Connection(Stream::socket s, PeerCred p, std::uint64_t i) : sock(std::move(s)), peer(std::move(p)), id(i) {}
  Stream::socket sock;
  PeerCred peer;
  std::uint64_t id;
  FrameDecoder decoder;
  std::array<char, kReadChunk> rbuf{};
  std::deque<std::string> queue;
  std::size_t queuedBytes = 0;
  bool writing = false;
  bool subscribed = false;
  bool open = true;
};
using ConnPtr = std::shared_ptr<Connection>;

Result<PeerCred> peerCredOf(int fd) {
  ucred c{};
  socklen_t len = sizeof c;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &len) != 0) return errnoError("getsockopt SO_PEERCRED", errno);
  return PeerCred{c.pid, c.uid, c.gid, {}};
}

}  // namespace

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Impl(asio::io_context& i, ServerOptions o, RequestHandler h)
      : io(i), opts(std::move(o)), handler(std::move(h)), acceptor(i), retry(i) {}

  asio::io_context& io;
  ServerOptions opts;
  RequestHandler handler;
  Stream::acceptor acceptor;
  asio::steady_timer retry;
  std::map<std::uint64_t, ConnPtr> conns;
  std::uint64_t nextConnId = 1;
  bool running = false;
  std::optional<ino_t> boundInode;  // the socket file we created, so stop() never unlinks someone else's

  Status start();
  void stop();
  void accept();
  void admit(Stream::socket sock);
  void read(const ConnPtr& c);
  void onFrame(const ConnPtr& c, LocalFrame&& frame);
  void sendReply(const ConnPtr& c, LocalReply&& reply);
  void send(const ConnPtr& c, std::string bytes);
  void flush(const ConnPtr& c);
  void drop(const ConnPtr& c, std::string_view why, bool warn);
  void unlinkSocket();
};

Status Server::Impl::start() {
  if (running) return Error{"ipc server " + opts.socketPath.string() + ": already started"};
  const auto& path = opts.socketPath;
  if (path.empty() || !fitsSunPath(path)) return Error{"socket path '" + path.string() + "' is empty or too long"};
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) return Error{"create directory " + path.parent_path().string() + ": " + ec.message(), ec.value()};
  }

  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Error{path.string() + ": exists and is not a socket"};
    // Only a socket nobody listens on is stale; replacing a live one would steal another daemon's clients.
    UniqueFd probe{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
    if (probe.get() < 0) return errnoError("socket", errno);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.native().size());
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 || errno == EAGAIN)
      return Error{path.string() + ": another server is listening on this socket", EADDRINUSE};
    if (errno != ECONNREFUSED) return errnoError("probe " + path.string(), errno);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return errnoError("remove stale socket " + path.string(), errno);
  } else if (errno != ENOENT) {
    return errnoError("stat " + path.string(), errno);
  }

  boost::system::error_code ec;
  auto failed = [&](std::string what, int err) -> Status {
    boost::system::error_code ignored;
    acceptor.close(ignored);
    unlinkSocket();
    return errnoError(what + " " + path.string(), err);
  };
  acceptor.open(Stream(), ec);
  if (ec) return failed("socket for", ec.value());
  acceptor.bind(Stream::endpoint(path.string()), ec);
  if (ec) return failed("bind", ec.value());
  if (::lstat(path.c_str(), &st) == 0) boundInode = st.st_ino;
  // Clients cannot connect before listen(), so fixing mode and group here leaves no window.
  if (::chmod(path.c_str(), opts.mode) != 0) return failed("chmod", errno);
  if (opts.socketGroup && ::chown(path.c_str(), static_cast<uid_t>(-1), *opts.socketGroup) != 0)
    return failed("chown", errno);
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return failed("listen on", ec.value());
  running = true;
  accept();
  return {};
}

void Server::Impl::unlinkSocket() {
  if (!boundInode) return;
  struct stat st {};
  if (::lstat(opts.socketPath.c_str(), &st) == 0 && st.st_ino == *boundInode) ::unlink(opts.socketPath.c_str());
  boundInode.reset();
}

void Server::Impl::stop() {
  running = false;
  retry.cancel();
  boost::system::error_code ignored;
  acceptor.close(ignored);
  auto all = std::move(conns);
  conns.clear();
  for (auto& [id, c] : all) {
    c->open = false;
    c->sock.close(ignored);
  }
  unlinkSocket();
}

void Server::Impl::accept() {
  acceptor.async_accept([self = shared_from_this()](const boost::system::error_code& ec, Stream::socket sock) {
    if (!self->running || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Typically EMFILE: back off briefly rather than spin, and keep serving the connections we have.
      LOG_WARN("ipc {}: accept: {}, retrying", self->opts.socketPath.string(), ec.message());
      self->retry.expires_after(std::chrono::milliseconds(100));
      self->retry.async_wait([self](const boost::system::error_code& e) {
        if (!e && self->running) self->accept();
      });
      return;
    }
    self->admit(std::move(sock));
    self->accept();
  });
}

void Server::Impl::admit(Stream::socket sock) {
  boost::system::error_code ignored;
  auto cred = peerCredOf(sock.native_handle());
  if (!cred) {
    LOG_WARN("ipc {}: {}, refusing connection", opts.socketPath.string(), cred.error().message);
    sock.close(ignored);
    return;
  }
  PeerCred peer = std::move(*cred);
  if (!opts.access.allows(peer) && opts.access.group) {
    // Supplementary groups are not part of SO_PEERCRED; read them only when uid and gid did not decide.
    if (auto groups = supplementaryGroups(peer.pid)) peer.groups = std::move(*groups);
  }
  if (!opts.access.allows(peer)) {
    LOG_WARN("ipc {}: refusing peer pid {} uid {} gid {}: not permitted", opts.socketPath.string(), peer.pid, peer.uid,
             peer.gid);
    sock.close(ignored);
    return;
  }
  if (conns.size() >= opts.maxClients) {
    LOG_WARN("ipc {}: refusing peer pid {}: {} clients already connected", opts.socketPath.string(), peer.pid,
             conns.size());
    sock.close(ignored);
    return;
  }
  auto c = std::make_shared<Connection>(std::move(sock), std::move(peer), nextConnId++);
  conns.emplace(c->id, c);
  LOG_DEBUG("ipc {}: client {} connected (pid {} uid {})", opts.socketPath.string(), c->id, c->peer.pid, c->peer.uid);
  read(c);
}

void Server::Impl::read(const ConnPtr& c) {
  c->sock.async_read_some(asio::buffer(c->rbuf),
                          [self = shared_from_this(), c](const boost::system::error_code& ec, std::size_t n) {
                            if (!c->open) return;
                            if (ec) {
                              self->drop(c, ec == asio::error::eof ? "disconnected" : ec.message(), false);
                              return;
                            }
                            c->decoder.feed(c->rbuf.data(), n);
                            for (;;) {
                              auto frame = c->decoder.next();
                              if (!frame) {
                                self->drop(c, frame.error().message, true);
                                return;
                              }
                              if (!*frame) break;
                              self->onFrame(c, std::move(**frame));
                              if (!c->open) return;
                            }
                            self->read(c);
                          });
}

void Server::Impl::onFrame(const ConnPtr& c, LocalFrame&& frame) {
  if (!frame.has_request()) {
    drop(c, "peer sent a reply or event, which only the server may send", true);
    return;
  }
  LocalRequest req = std::move(*frame.mutable_request());
  if (req.body_case() == LocalRequest::kSubscribe) {
    c->subscribed = true;
    LocalReply reply;
    reply.set_id(req.id());
    reply.mutable_subscribe();
    sendReply(c, std::move(reply));
    return;
  }
  if (!handler) {
    auto reply = errorReply(LocalError::UNSUPPORTED, "no handler for requests");
    reply.set_id(req.id());
    sendReply(c, std::move(reply));
    return;
  }
  // The reply may come later from the loop: it must neither outlive the connection nor be sent twice.
  auto replied = std::make_shared<bool>(false);
  Replier reply = [weakSelf = weak_from_this(), weakConn = std::weak_ptr<Connection>(c), id = req.id(),
                   replied](LocalReply r) {
    if (*replied) return;
    *replied = true;
    auto self = weakSelf.lock();
    auto conn = weakConn.lock();
    if (!self || !conn || !conn->open) return;
    r.set_id(id);
    self->sendReply(conn, std::move(r));
  };
  try {
    handler(c->peer, req, reply);
  } catch (const std::exception& e) {
    LOG_ERR("ipc {}: request handler failed: {}", opts.socketPath.string(), e.what());
    reply(errorReply(LocalError::INTERNAL, "internal error"));
  }
}

void Server::Impl::sendReply(const ConnPtr& c, LocalReply&& reply) {
  LocalFrame f;
  *f.mutable_reply() = std::move(reply);
  std::string bytes = encodeFrame(f);
  if (bytes.size() > kHeaderBytes + kMaxFrameBytes) {
    // The client would drop the connection on it; an error reply keeps the session usable.
    auto err = errorReply(LocalError::INTERNAL, "reply exceeds the frame size limit");
    err.set_id(f.reply().id());
    LocalFrame small;
    *small.mutable_reply() = std::move(err);
    bytes = encodeFrame(small);
  }
  send(c, std::move(bytes));
}

void Server::Impl::send(const ConnPtr& c, std::string bytes) {
  if (!c->open) return;
  if (c->queuedBytes + bytes.size() > opts.maxQueuedBytes) {
    drop(c, "write queue full (client not reading)", true);
    return;
  }
  c->queuedBytes += bytes.size();
  c->queue.push_back(std::move(bytes));
  flush(c);
}

void Server::Impl::flush(const ConnPtr& c) {
  if (c->writing || c->queue.empty() || !c->open) return;
  c->writing = true;
  asio::async_write(c->sock, asio::buffer(c->queue.front()),
                    [self = shared_from_this(), c](const boost::system::error_code& ec, std::size_t) {
                      c->writing = false;
                      if (!c->open) return;
                      if (ec) {
                        self->drop(c, ec.message(), false);
                        return;
                      }
                      c->queuedBytes -= c->queue.front().size();
                      c->queue.pop_front();
                      self->flush(c);
                    });
}

void Server::Impl::drop(const ConnPtr& c, std::string_view why, bool warn) {
  if (!c->open) return;
  c->open = false;
  boost::system::error_code ignored;
  c->sock.close(ignored);
  conns.erase(c->id);
  if (warn)
    LOG_WARN("ipc {}: closing client {} (pid {}): {}", opts.socketPath.string(), c->id, c->peer.pid, why);
  else
    LOG_DEBUG("ipc {}: client {} (pid {}) gone: {}", opts.socketPath.string(), c->id, c->peer.pid, why);
}

Server::Server(asio::io_context& io, ServerOptions opts, RequestHandler handler)
    : impl_(std::make_shared<Impl>(io, std::move(opts), std::move(handler))) {}

Server::~Server() { impl_->stop(); }

Status Server::start() { return impl_->start(); }

void Server::stop() { impl_->stop(); }

void Server::publish(const LocalEvent& ev) {
  LocalFrame f;
  *f.mutable_event() = ev;
  std::string bytes = encodeFrame(f);
  if (bytes.size() > kHeaderBytes + kMaxFrameBytes) {
    LOG_WARN("ipc {}: event '{}' exceeds the frame size limit, not sent", impl_->opts.socketPath.string(), ev.kind());
    return;
  }
  std::vector<ConnPtr> targets;
  for (auto& [id, c] : impl_->conns)
    if (c->subscribed) targets.push_back(c);
  for (auto& c : targets) impl_->send(c, bytes);
}

std::size_t Server::clientCount() const { return impl_->conns.size(); }

std::size_t Server::subscriberCount() const {
  return static_cast<std::size_t>(
      std::count_if(impl_->conns.begin(), impl_->conns.end(), [](const auto& kv) { return kv.second->subscribed; }));
}

const std::filesystem::path& Server::socketPath() const { return impl_->opts.socketPath; }

// ---------------------------------------------------------------------------------------------------
// Client

struct Client::Impl : std::enable_shared_from_this<Client::Impl> {
  Impl(asio::io_context& i, std::filesystem::path p) : io(i), path(std::move(p)), reconnectTimer(i) {}

  enum class State { idle, connecting, connected };
  struct Pending {
    ReplyFn done;
    std::unique_ptr<asio::steady_timer> timer;
  };

  asio::io_context& io;
  std::filesystem::path path;
  State state = State::idle;
  std::optional<Stream::socket> sock;
  std::uint64_t generation = 0;  // bumped per connection, so callbacks of an old one are ignored
  FrameDecoder decoder;
  std::array<char, kReadChunk> rbuf{};
  std::deque<std::string> queue;
  bool writing = false;
  bool subscribedHere = false;  // a SubscribeRequest went out on the current connection
  std::map<std::uint64_t, Pending> pending;
  std::uint64_t nextId = 1;
  std::vector<EventFn> subscribers;
  asio::steady_timer reconnectTimer;
  std::chrono::milliseconds backoff{100};
  bool userClosed = false;
  bool destroyed = false;

  void connect();
  void read();
  void flush();
  void queueSubscribe(bool front);
  void onFrame(LocalFrame&& frame);
  void disconnect(const Error& why, bool mayReconnect);
  void complete(std::uint64_t id, Result<LocalReply> result);
};

void Client::Impl::connect() {
  state = State::connecting;
  ++generation;
  writing = false;
  subscribedHere = false;
  decoder = FrameDecoder{};
  sock.emplace(io);
  if (!fitsSunPath(path)) {
    disconnect(Error{"connect " + path.string() + ": path too long"}, false);
    return;
  }
  sock->async_connect(Stream::endpoint(path.string()),
                      [self = shared_from_this(), g = generation](const boost::system::error_code& ec) {
                        if (g != self->generation) return;
                        if (ec) {
                          self->disconnect(Error{"connect " + self->path.string() + ": " + ec.message(), ec.value()},
                                           true);
                          return;
                        }
                        self->state = State::connected;
                        self->backoff = std::chrono::milliseconds(100);
                        // Ahead of queued calls, so events that their effects cause are not missed.
                        if (!self->subscribers.empty()) self->queueSubscribe(true);
                        self->read();
                        self->flush();
                      });
}

void Client::Impl::queueSubscribe(bool front) {
  LocalFrame f;
  f.mutable_request()->set_id(nextId++);
  f.mutable_request()->mutable_subscribe();
  // Its reply matches no pending call and is ignored.
  if (front)
    queue.push_front(encodeFrame(f));
  else
    queue.push_back(encodeFrame(f));
  subscribedHere = true;
}

void Client::Impl::read() {
  sock->async_read_some(asio::buffer(rbuf), [self = shared_from_this(), g = generation](
                                                const boost::system::error_code& ec, std::size_t n) {
    if (g != self->generation) return;
    if (ec) {
      self->disconnect(Error{"connection to " + self->path.string() + " lost: " + ec.message(), ec.value()}, true);
      return;
    }
    self->decoder.feed(self->rbuf.data(), n);
    for (;;) {
      auto frame = self->decoder.next();
      if (!frame) {
        self->disconnect(Error{"bad frame from " + self->path.string() + ": " + frame.error().message}, true);
        return;
      }
      if (!*frame) break;
      self->onFrame(std::move(**frame));
      if (g != self->generation) return;  // a callback closed or replaced the connection
    }
    self->read();
  });
}

void Client::Impl::onFrame(LocalFrame&& frame) {
  if (frame.has_reply()) {
    auto id = frame.reply().id();
    complete(id, std::move(*frame.mutable_reply()));
  } else if (frame.has_event()) {
    auto subs = subscribers;  // a callback may subscribe again
    for (auto& fn : subs) fn(frame.event());
  } else {
    disconnect(Error{"protocol error from " + path.string() + ": server sent a request"}, true);
  }
}

void Client::Impl::complete(std::uint64_t id, Result<LocalReply> result) {
  auto it = pending.find(id);
  if (it == pending.end()) return;  // timed out already, or our own SubscribeRequest
  auto done = std::move(it->second.done);
  if (it->second.timer) it->second.timer->cancel();
  pending.erase(it);
  if (done) done(std::move(result));
}

void Client::Impl::flush() {
  if (state != State::connected || writing || queue.empty()) return;
  writing = true;
  asio::async_write(*sock, asio::buffer(queue.front()),
                    [self = shared_from_this(), g = generation](const boost::system::error_code& ec, std::size_t) {
                      if (g != self->generation) return;
                      self->writing = false;
                      if (ec) {
                        self->disconnect(
                            Error{"send to " + self->path.string() + ": " + ec.message(), ec.value()}, true);
                        return;
                      }
                      self->queue.pop_front();
                      self->flush();
                    });
}

void Client::Impl::disconnect(const Error& why, bool mayReconnect) {
  ++generation;
  state = State::idle;
  writing = false;
  subscribedHere = false;
  queue.clear();
  if (sock) {
    boost::system::error_code ignored;
    sock->close(ignored);
  }
  // Completions go through the loop so a caller's callback never runs inside its own call() or close().
  auto failed = std::move(pending);
  pending.clear();
  for (auto& [id, p] : failed) {
    if (p.timer) p.timer->cancel();
    if (p.done && !destroyed) asio::post(io, [done = std::move(p.done), why] { done(why); });
  }
  if (mayReconnect && !userClosed && !destroyed && !subscribers.empty()) {
    // Subscribers want events without having to call; retry with backoff until the server is back.
    reconnectTimer.expires_after(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
    reconnectTimer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->destroyed || self->userClosed || self->state != State::idle) return;
      if (!self->subscribers.empty()) self->connect();
    });
  }
}

Client::Client(asio::io_context& io, std::filesystem::path socketPath)
    : impl_(std::make_shared<Impl>(io, std::move(socketPath))) {}

Client::~Client() {
  impl_->destroyed = true;
  impl_->subscribers.clear();
  for (auto& [id, p] : impl_->pending) p.done = nullptr;
  impl_->reconnectTimer.cancel();
  impl_->disconnect(Error{"client destroyed"}, false);
}

void Client::call(LocalRequest req, std::chrono::milliseconds timeout, ReplyFn done) {
  auto& d = *impl_;
  d.userClosed = false;
  std::uint64_t id = d.nextId++;
  req.set_id(id);
  LocalFrame f;
  *f.mutable_request() = std::move(req);
  std::string bytes = encodeFrame(f);
  if (bytes.size() > kHeaderBytes + kMaxFrameBytes) {
    asio::post(d.io, [done = std::move(done)] { done(Error{"request exceeds the frame size limit"}); });
    return;
  }
  Impl::Pending p;
  p.done = std::move(done);
  p.timer = std::make_unique<asio::steady_timer>(d.io, timeout);
  p.timer->async_wait([weak = std::weak_ptr<Impl>(impl_), id, timeout](const boost::system::error_code& ec) {
    auto self = weak.lock();
    if (ec || !self || self->destroyed) return;
    self->complete(id, Error{fmt::format("call {} to {}: no reply within {} ms", id, self->path.string(),
                                         timeout.count()),
                             ETIMEDOUT});
  });
  d.pending.emplace(id, std::move(p));
  d.queue.push_back(std::move(bytes));
  if (d.state == Impl::State::idle)
    d.connect();
  else
    d.flush();
}

void Client::subscribe(EventFn fn) {
  auto& d = *impl_;
  d.userClosed = false;
  d.subscribers.push_back(std::move(fn));
  if (d.state == Impl::State::idle) {
    d.connect();  // the connect handler subscribes
  } else if (d.state == Impl::State::connected && !d.subscribedHere) {
    d.queueSubscribe(false);
    d.flush();
  }
}

void Client::close() {
  impl_->userClosed = true;
  impl_->reconnectTimer.cancel();
  if (impl_->state != Impl::State::idle) impl_->disconnect(Error{"client closed"}, false);
}

bool Client::connected() const { return impl_->state == Impl::State::connected; }

const std::filesystem::path& Client::socketPath() const { return impl_->path; }

}  // namespace outrider::ipc
