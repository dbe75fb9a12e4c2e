#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "outrider/common/ipc.hpp"
#include "support/process.hpp"
#include "unit/test_ipc_support.hpp"

using namespace outrider;
using namespace std::chrono_literals;
using outrider::test::callAndWait;
using outrider::test::runUntil;
using outrider::v1::LocalEvent;
using outrider::v1::LocalReply;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

/// A server on a socket in a fresh temp dir. Its handler answers HealthRequest with the request id
/// in `detail`, so a test can see that each reply belongs to its request; with `park` set it keeps the
/// reply function instead of answering.
struct Rig {
  explicit Rig(std::size_t maxClients = 16, std::size_t maxQueuedBytes = 4u << 20) {
    opts.socketPath = dir / "api.sock";
    opts.maxClients = maxClients;
    opts.maxQueuedBytes = maxQueuedBytes;
    startServer();
  }
  void startServer() {
    server = std::make_unique<ipc::Server>(io, opts, [this](const ipc::PeerCred& peer, const v1::LocalRequest& req,
                                                            ipc::Replier reply) {
      ++handled;
      lastPeer = peer;
      if (park) {
        parked.push_back(std::move(reply));
        return;
      }
      LocalReply r;
      r.mutable_health()->set_detail(std::to_string(req.id()));
      reply(std::move(r));
    });
    auto st = server->start();
    REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  }
  fs::path socket() const { return opts.socketPath; }

  outrider::test::TempDir dir{"ipc"};
  asio::io_context io;
  ipc::ServerOptions opts;
  std::unique_ptr<ipc::Server> server;
  bool park = false;
  std::vector<ipc::Replier> parked;
  int handled = 0;
  ipc::PeerCred lastPeer;
};

LocalEvent event(std::uint64_t seq, std::string kind = "vm.state") {
  LocalEvent ev;
  ev.set_seq(seq);
  ev.set_kind(std::move(kind));
  ev.set_subject("web-1");
  return ev;
}

ipc::ServerOptions optionsFor(const fs::path& path) {
  ipc::ServerOptions o;
  o.socketPath = path;
  return o;
}

/// A raw unix socket connected to the server, for speaking bad protocol.
asio::local::stream_protocol::socket rawConnect(asio::io_context& io, const fs::path& path) {
  asio::local::stream_protocol::socket s(io);
  s.connect(asio::local::stream_protocol::endpoint(path.string()));
  return s;
}

/// Run the loop until the server has closed `s` (the read sees EOF or an error).
bool closedByServer(asio::io_context& io, asio::local::stream_protocol::socket& s) {
  auto closed = std::make_shared<bool>(false);
  auto buf = std::make_shared<std::vector<char>>(1 << 16);
  auto loop = std::make_shared<std::function<void()>>();
  *loop = [&s, closed, buf, weak = std::weak_ptr<std::function<void()>>(loop)] {
    s.async_read_some(asio::buffer(*buf), [closed, weak](const boost::system::error_code& ec, std::size_t) {
      if (ec) {
        *closed = true;
        return;
      }
      if (auto next = weak.lock()) (*next)();
    });
  };
  (*loop)();
  return runUntil(io, [&] { return *closed; });
}

}  // namespace

TEST_CASE("a reply carries its request's id, and the server sees the peer's credentials") {
  Rig rig;
  ipc::Client client(rig.io, rig.socket());
  auto r = callAndWait(rig.io, client);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->id() != 0);
  CHECK(r->health().detail() == std::to_string(r->id()));
  CHECK(rig.lastPeer.pid == ::getpid());
  CHECK(rig.lastPeer.uid == ::geteuid());
  CHECK(client.connected());

  struct stat st {};
  REQUIRE(::stat(rig.socket().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);
}

TEST_CASE("concurrent calls from several clients each get their own reply") {
  Rig rig;
  std::vector<std::unique_ptr<ipc::Client>> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(std::make_unique<ipc::Client>(rig.io, rig.socket()));
  int ok = 0, bad = 0;
  for (auto& c : clients)
    for (int i = 0; i < 25; ++i)
      c->call(outrider::test::healthRequest(), 3s, [&](Result<LocalReply> r) {
        if (r.ok() && r->health().detail() == std::to_string(r->id()))
          ++ok;
        else
          ++bad;
      });
  REQUIRE(runUntil(rig.io, [&] { return ok + bad == 100; }));
  CHECK(ok == 100);
  CHECK(rig.server->clientCount() == 4);
}

TEST_CASE("published events reach subscribers only") {
  Rig rig;
  ipc::Client sub(rig.io, rig.socket());
  ipc::Client other(rig.io, rig.socket());
  std::vector<LocalEvent> subGot, otherGot;
  sub.subscribe([&](const LocalEvent& ev) { subGot.push_back(ev); });
  REQUIRE(callAndWait(rig.io, other).ok());
  REQUIRE(runUntil(rig.io, [&] { return rig.server->subscriberCount() == 1 && rig.server->clientCount() == 2; }));

  rig.server->publish(event(1));
  rig.server->publish(event(2, "tunnel.up"));
  REQUIRE(runUntil(rig.io, [&] { return subGot.size() == 2; }));
  CHECK(subGot[0].seq() == 1);
  CHECK(subGot[1].kind() == "tunnel.up");
  // Anything sent to `other` before this reply would have arrived first.
  REQUIRE(callAndWait(rig.io, other).ok());
  CHECK(otherGot.empty());
}

TEST_CASE("a call whose handler never replies times out, and a late reply is ignored") {
  Rig rig;
  ipc::Client client(rig.io, rig.socket());
  rig.park = true;
  auto r = callAndWait(rig.io, client, outrider::test::healthRequest(), 150ms);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("no reply within 150 ms") != std::string::npos);
  REQUIRE(rig.parked.size() == 1);

  // The late reply reaches the client, which has forgotten that id; the connection stays usable.
  rig.parked[0](LocalReply{});
  rig.parked[0](LocalReply{});  // a second reply is ignored by the server
  rig.park = false;
  auto again = callAndWait(rig.io, client);
  REQUIRE_MESSAGE(again.ok(), (again.ok() ? "" : again.error().message));
  CHECK(again->health().detail() == std::to_string(again->id()));
  CHECK(rig.server->clientCount() == 1);
}

TEST_CASE("a client fails while the server is gone, then reconnects and re-subscribes after a restart") {
  Rig rig;
  ipc::Client client(rig.io, rig.socket());
  std::vector<LocalEvent> got;
  client.subscribe([&](const LocalEvent& ev) { got.push_back(ev); });
  REQUIRE(callAndWait(rig.io, client).ok());
  rig.server->publish(event(1));
  REQUIRE(runUntil(rig.io, [&] { return got.size() == 1; }));

  rig.server.reset();  // stops, closes the connection, unlinks the socket
  CHECK_FALSE(fs::exists(rig.socket()));
  REQUIRE(runUntil(rig.io, [&] { return !client.connected(); }));
  auto down = callAndWait(rig.io, client);
  REQUIRE_FALSE(down.ok());
  CHECK(down.error().message.find(rig.socket().string()) != std::string::npos);

  rig.startServer();
  auto up = callAndWait(rig.io, client);
  REQUIRE_MESSAGE(up.ok(), (up.ok() ? "" : up.error().message));
  // The client subscribed again on the new connection before sending the call.
  CHECK(rig.server->subscriberCount() == 1);
  rig.server->publish(event(2));
  REQUIRE(runUntil(rig.io, [&] { return got.size() == 2; }));
  CHECK(got[1].seq() == 2);
}

TEST_CASE("a subscribed client reconnects by itself after the server restarts") {
  Rig rig;
  ipc::Client client(rig.io, rig.socket());
  std::vector<LocalEvent> got;
  client.subscribe([&](const LocalEvent& ev) { got.push_back(ev); });
  REQUIRE(runUntil(rig.io, [&] { return rig.server->subscriberCount() == 1; }));
  rig.server.reset();
  REQUIRE(runUntil(rig.io, [&] { return !client.connected(); }));
  rig.startServer();
  REQUIRE(runUntil(rig.io, [&] { return rig.server->subscriberCount() == 1; }, 10s));
  rig.server->publish(event(5));
  REQUIRE(runUntil(rig.io, [&] { return got.size() == 1; }));
}

TEST_CASE("a client that sends garbage is dropped; other clients are unaffected") {
  Rig rig;
  ipc::Client good(rig.io, rig.socket());
  REQUIRE(callAndWait(rig.io, good).ok());

  SUBCASE("unparsable payload") {
    auto raw = rawConnect(rig.io, rig.socket());
    REQUIRE(runUntil(rig.io, [&] { return rig.server->clientCount() == 2; }));
    std::string junk = std::string("\0\0\0\x04", 4) + "\xff\xff\xff\xff";
    asio::write(raw, asio::buffer(junk));
    CHECK(closedByServer(rig.io, raw));
  }
  SUBCASE("length over the limit") {
    auto raw = rawConnect(rig.io, rig.socket());
    REQUIRE(runUntil(rig.io, [&] { return rig.server->clientCount() == 2; }));
    std::string huge("\x7f\xff\xff\xff", 4);
    asio::write(raw, asio::buffer(huge));
    CHECK(closedByServer(rig.io, raw));
  }
  SUBCASE("a reply frame, which only the server may send") {
    auto raw = rawConnect(rig.io, rig.socket());
    REQUIRE(runUntil(rig.io, [&] { return rig.server->clientCount() == 2; }));
    v1::LocalFrame f;
    f.mutable_reply()->set_id(1);
    asio::write(raw, asio::buffer(ipc::encodeFrame(f)));
    CHECK(closedByServer(rig.io, raw));
  }
  SUBCASE("a peer that disconnects mid-frame") {
    {
      auto raw = rawConnect(rig.io, rig.socket());
      REQUIRE(runUntil(rig.io, [&] { return rig.server->clientCount() == 2; }));
      asio::write(raw, asio::buffer(std::string("\0\0\0\x20" "abc", 7)));
    }
  }
  REQUIRE(runUntil(rig.io, [&] { return rig.server->clientCount() == 1; }));
  auto r = callAndWait(rig.io, good);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->health().detail() == std::to_string(r->id()));
}

TEST_CASE("connections beyond maxClients are refused until a slot frees") {
  Rig rig(2);
  ipc::Client a(rig.io, rig.socket()), b(rig.io, rig.socket()), c(rig.io, rig.socket());
  REQUIRE(callAndWait(rig.io, a).ok());
  REQUIRE(callAndWait(rig.io, b).ok());
  CHECK_FALSE(callAndWait(rig.io, c).ok());
  CHECK(rig.server->clientCount() == 2);
  a.close();
  REQUIRE(runUntil(rig.io, [&] { return rig.server->clientCount() == 1; }));
  CHECK(callAndWait(rig.io, c).ok());
  CHECK(callAndWait(rig.io, b).ok());
}

TEST_CASE("a subscriber that stops reading is closed once its write queue is full") {
  Rig rig(16, 64 * 1024);
  auto raw = rawConnect(rig.io, rig.socket());
  v1::LocalFrame sub;
  sub.mutable_request()->set_id(1);
  sub.mutable_request()->mutable_subscribe();
  asio::write(raw, asio::buffer(ipc::encodeFrame(sub)));
  REQUIRE(runUntil(rig.io, [&] { return rig.server->subscriberCount() == 1; }));
  ipc::Client good(rig.io, rig.socket());
  REQUIRE(callAndWait(rig.io, good).ok());

  // Far more than the kernel buffer plus the 64 KiB queue; `raw` never reads.
  auto big = event(1);
  big.set_detail(std::string(16 * 1024, 'e'));
  for (int i = 0; i < 400 && rig.server->subscriberCount() > 0; ++i) {
    rig.server->publish(big);
    rig.io.restart();
    rig.io.poll();
  }
  CHECK(rig.server->subscriberCount() == 0);
  CHECK(rig.server->clientCount() == 1);
  CHECK(callAndWait(rig.io, good).ok());
}

TEST_CASE("a stale socket file is replaced, a live one is not; stop removes the socket") {
  outrider::test::TempDir dir{"ipc"};
  asio::io_context io;
  auto path = dir / "api.sock";
  {
    // A socket file left by a crashed server: bound, never listening any more.
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path.c_str());
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    ::close(fd);
  }
  REQUIRE(fs::exists(path));
  auto handler = [](const ipc::PeerCred&, const v1::LocalRequest&, ipc::Replier reply) { reply(LocalReply{}); };
  ipc::Server first(io, optionsFor(path), handler);
  auto st = first.start();
  REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));

  ipc::Server second(io, optionsFor(path), handler);
  auto st2 = second.start();
  REQUIRE_FALSE(st2.ok());
  CHECK(st2.error().message.find("another server is listening") != std::string::npos);

  ipc::Client client(io, path);
  CHECK(callAndWait(io, client).ok());
  second.stop();  // never bound: must not remove the first server's socket
  CHECK(fs::exists(path));
  CHECK(callAndWait(io, client).ok());

  first.stop();
  CHECK_FALSE(fs::exists(path));

  // A regular file in the way is not ours to delete.
  { std::ofstream(path.string()) << "x"; }
  ipc::Server third(io, optionsFor(path), handler);
  CHECK_FALSE(third.start().ok());
  CHECK(fs::exists(path));
}
