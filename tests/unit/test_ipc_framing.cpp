#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "outrider/common/ipc.hpp"

using namespace outrider;
using outrider::v1::LocalFrame;

namespace {

LocalFrame healthFrame(std::uint64_t id) {
  LocalFrame f;
  f.mutable_request()->set_id(id);
  f.mutable_request()->mutable_health();
  return f;
}

std::string header(std::uint32_t n) {
  return {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8), static_cast<char>(n)};
}

}  // namespace

TEST_CASE("encodeFrame writes a big-endian length and the frame decodes back") {
  LocalFrame f;
  auto* ev = f.mutable_event();
  ev->set_seq(7);
  ev->set_kind("vm.state");
  ev->set_subject("web-1");
  ev->set_detail(std::string(300, 'x'));
  auto bytes = ipc::encodeFrame(f);
  REQUIRE(bytes.size() > 4);
  CHECK(bytes.substr(0, 4) == header(static_cast<std::uint32_t>(bytes.size() - 4)));

  ipc::FrameDecoder d;
  d.feed(bytes.data(), bytes.size());
  auto got = d.next();
  REQUIRE(got.ok());
  REQUIRE(got->has_value());
  CHECK((*got)->event().seq() == 7);
  CHECK((*got)->event().detail() == std::string(300, 'x'));
  CHECK((*got)->event().subject() == "web-1");
  CHECK(d.buffered() == 0);
}

TEST_CASE("a frame fed byte by byte comes out only when complete") {
  auto bytes = ipc::encodeFrame(healthFrame(99)) + ipc::encodeFrame(healthFrame(100));
  ipc::FrameDecoder d;
  std::vector<std::uint64_t> ids;
  for (char c : bytes) {
    d.feed(&c, 1);
    for (;;) {
      auto f = d.next();
      REQUIRE(f.ok());
      if (!f->has_value()) break;
      ids.push_back((*f)->request().id());
    }
  }
  CHECK(ids == std::vector<std::uint64_t>{99, 100});
}

TEST_CASE("several frames in one feed") {
  std::string bytes;
  for (std::uint64_t i = 1; i <= 5; ++i) bytes += ipc::encodeFrame(healthFrame(i));
  ipc::FrameDecoder d;
  d.feed(bytes.data(), bytes.size());
  for (std::uint64_t i = 1; i <= 5; ++i) {
    auto f = d.next();
    REQUIRE(f.ok());
    REQUIRE(f->has_value());
    CHECK((*f)->request().id() == i);
    CHECK((*f)->request().has_health());
  }
  auto none = d.next();
  REQUIRE(none.ok());
  CHECK_FALSE(none->has_value());
}

TEST_CASE("a length over the limit makes the stream bad at once, without waiting for the payload") {
  ipc::FrameDecoder d;
  auto h = header(ipc::kMaxFrameBytes + 1);
  d.feed(h.data(), h.size());
  auto f = d.next();
  REQUIRE_FALSE(f.ok());
  CHECK(f.error().message.find("exceeds") != std::string::npos);
  // It stays bad: later bytes, even a valid frame, are not decoded.
  auto good = ipc::encodeFrame(healthFrame(1));
  d.feed(good.data(), good.size());
  CHECK_FALSE(d.next().ok());
}

TEST_CASE("a length at the limit is accepted and waits for its payload") {
  ipc::FrameDecoder d;
  auto h = header(ipc::kMaxFrameBytes);
  d.feed(h.data(), h.size());
  auto f = d.next();
  REQUIRE(f.ok());
  CHECK_FALSE(f->has_value());
}

TEST_CASE("a garbage payload makes the stream bad") {
  // Field 1 (request) claims 5 bytes but the payload ends after 2: truncated.
  std::string payload = "\x0a\x05" "ab";
  auto bytes = header(static_cast<std::uint32_t>(payload.size())) + payload;
  ipc::FrameDecoder d;
  d.feed(bytes.data(), bytes.size());
  auto f = d.next();
  REQUIRE_FALSE(f.ok());
  CHECK(f.error().message.find("does not parse") != std::string::npos);
}

TEST_CASE("a zero-length frame and a frame of only unknown fields are refused") {
  ipc::FrameDecoder d;
  auto h = header(0);
  d.feed(h.data(), h.size());
  CHECK_FALSE(d.next().ok());

  // Field 99, varint 1: well-formed protobuf, but no request, reply or event.
  std::string payload = "\x98\x06\x01";
  auto bytes = header(static_cast<std::uint32_t>(payload.size())) + payload;
  ipc::FrameDecoder d2;
  d2.feed(bytes.data(), bytes.size());
  CHECK_FALSE(d2.next().ok());
}

TEST_CASE("AccessPolicy: root, own uid, group by primary or supplementary gid, extra uids") {
  const uid_t self = ::geteuid();
  const uid_t stranger = self == 4242 ? 4243 : 4242;
  ipc::AccessPolicy none;
  CHECK(none.allows({1, 0, 0, {}}));
  CHECK(none.allows({1, self, 12345, {}}));
  CHECK_FALSE(none.allows({1, stranger, 777, {777}}));

  ipc::AccessPolicy grp;
  grp.group = 777;
  CHECK(grp.allows({1, stranger, 777, {}}));
  CHECK(grp.allows({1, stranger, 100, {5, 777, 9}}));
  CHECK_FALSE(grp.allows({1, stranger, 100, {5, 9}}));
  CHECK_FALSE(grp.allows({1, stranger, 778, {}}));

  ipc::AccessPolicy extra;
  extra.extraUids = {stranger};
  CHECK(extra.allows({1, stranger, 100, {}}));
  CHECK_FALSE(extra.allows({1, stranger + 10, 100, {}}));
}

TEST_CASE("supplementary groups come from the Groups: line of /proc/PID/status") {
  CHECK(ipc::parseStatusGroups("Name:\tx\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 1000 \nNgid:\t0\n") ==
        std::vector<gid_t>{4, 24, 27, 1000});
  CHECK(ipc::parseStatusGroups("Name:\tx\nGroups:\t\n").empty());
  CHECK(ipc::parseStatusGroups("Name:\tx\n").empty());

  auto mine = ipc::supplementaryGroups(::getpid());
  REQUIRE(mine.ok());
  std::vector<gid_t> expected(static_cast<std::size_t>(::getgroups(0, nullptr)));
  REQUIRE(::getgroups(static_cast<int>(expected.size()), expected.data()) >= 0);
  std::sort(expected.begin(), expected.end());
  auto got = *mine;
  std::sort(got.begin(), got.end());
  CHECK(got == expected);
  CHECK_FALSE(ipc::supplementaryGroups(-5).ok());
}
