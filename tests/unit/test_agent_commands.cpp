// Unit tests of command checking and dispatch: the verifier with a fixed clock, and the processor with a
// real journal in a temp dir (no broker).
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>

#include "outrider/agent/journal.hpp"
#include "outrider/agent/processor.hpp"
#include "outrider/agent/verifier.hpp"
#include "support/commands.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::agent;
using Reply = outrider::v1::CommandReply;

namespace {

struct FixedClock final : Clock {
  std::int64_t now = 1'800'000'000'000;
  std::int64_t nowMs() const override { return now; }
};

struct Keys {
  crypto::SigningKey op = *crypto::SigningKey::generate();
  crypto::SigningKey stranger = *crypto::SigningKey::generate();
  std::map<std::string, crypto::VerifyKey> trusted() const { return {{op.publicKey().id(), op.publicKey()}}; }
};

outrider::v1::CommandBody pingBody(const FixedClock& c, std::string id, std::string node = "n1") {
  return outrider::test::pingBody(c.now, std::move(id), std::move(node));
}
using outrider::test::seal;

struct VerifierFixture {
  FixedClock clock;
  Keys keys;
  CommandVerifier verifier{"n1", keys.trusted(), VerifierLimits{}, clock};
  Reply::RejectReason check(const std::string& payload) {
    auto v = verifier.verify(payload);
    if (v.accepted()) v = verifier.checkTime(std::move(v));
    return v.reason;
  }
};

}  // namespace

TEST_CASE_FIXTURE(VerifierFixture, "a good command passes") {
  auto v = verifier.verify(seal(pingBody(clock, "c-1"), keys.op));
  REQUIRE(v.accepted());
  CHECK(v.commandId == "c-1");
  CHECK(verifier.checkTime(std::move(v)).accepted());
}

TEST_CASE_FIXTURE(VerifierFixture, "each bad command is rejected with its reason") {
  auto good = pingBody(clock, "c-1");
  SUBCASE("wrong signature") {
    outrider::v1::CommandEnvelope e;
    REQUIRE(e.ParseFromString(seal(good, keys.op)));
    std::string sig = e.signature();
    sig[5] ^= 0x01;
    e.set_signature(sig);
    CHECK(check(e.SerializeAsString()) == Reply::BAD_SIGNATURE);
  }
  SUBCASE("body changed after signing") {
    outrider::v1::CommandEnvelope e;
    REQUIRE(e.ParseFromString(seal(good, keys.op)));
    auto b = good;
    b.mutable_ping()->set_hold_ms(5);
    e.set_body(b.SerializeAsString());
    CHECK(check(e.SerializeAsString()) == Reply::BAD_SIGNATURE);
  }
  SUBCASE("unknown key") { CHECK(check(seal(good, keys.stranger)) == Reply::UNKNOWN_KEY); }
  SUBCASE("a stranger's key claiming a trusted key id") {
    outrider::v1::CommandEnvelope e;
    e.set_body(good.SerializeAsString());
    e.set_key_id(keys.op.publicKey().id());
    e.set_signature(keys.stranger.sign(e.body()));
    CHECK(check(e.SerializeAsString()) == Reply::BAD_SIGNATURE);
  }
  SUBCASE("another node's id") { CHECK(check(seal(pingBody(clock, "c-1", "n2"), keys.op)) == Reply::WRONG_NODE); }
  SUBCASE("expired") {
    auto b = good;
    b.set_issued_at_ms(clock.now - 2 * 3600'000);
    b.set_expires_at_ms(clock.now - 3600'000);
    CHECK(check(seal(b, keys.op)) == Reply::EXPIRED);
  }
  SUBCASE("dated an hour ahead") {
    auto b = good;
    b.set_issued_at_ms(clock.now + 3600'000);
    b.set_expires_at_ms(clock.now + 3660'000);
    CHECK(check(seal(b, keys.op)) == Reply::NOT_YET_VALID);
  }
  SUBCASE("within the clock-skew window is fine") {
    auto b = good;
    b.set_issued_at_ms(clock.now + 60'000);
    b.set_expires_at_ms(clock.now + 120'000);
    CHECK(check(seal(b, keys.op)) == Reply::REASON_NONE);
  }
  SUBCASE("valid for too long") {
    auto b = good;
    b.set_expires_at_ms(clock.now + 400LL * 86400'000);
    CHECK(check(seal(b, keys.op)) == Reply::VALIDITY_TOO_LONG);
  }
  SUBCASE("no times") {
    auto b = good;
    b.clear_issued_at_ms();
    CHECK(check(seal(b, keys.op)) == Reply::MALFORMED);
  }
  SUBCASE("bad command id") {
    auto b = pingBody(clock, "../etc");
    CHECK(check(seal(b, keys.op)) == Reply::MALFORMED);
    CHECK(check(seal(pingBody(clock, std::string(200, 'a')), keys.op)) == Reply::MALFORMED);
  }
  SUBCASE("no command") {
    auto b = good;
    b.clear_ping();
    CHECK(check(seal(b, keys.op)) == Reply::UNSUPPORTED);
  }
  SUBCASE("empty payload") { CHECK(check("") == Reply::MALFORMED); }
  SUBCASE("1 MiB of random bytes") {
    std::string junk(1 << 20, '\0');
    std::uint64_t x = 88172645463325252ull;
    for (auto& ch : junk) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      ch = static_cast<char>(x);
    }
    CHECK(check(junk) == Reply::OVERSIZED);
  }
  SUBCASE("random bytes under the size limit") {
    std::string junk(1000, '\0');
    std::uint64_t x = 1234567;
    for (auto& ch : junk) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      ch = static_cast<char>(x);
    }
    auto r = check(junk);
    CHECK((r == Reply::MALFORMED || r == Reply::UNKNOWN_KEY));
  }
  SUBCASE("truncated protobuf") {
    auto p = seal(good, keys.op);
    for (std::size_t cut : {p.size() - 1, p.size() / 2, std::size_t(3)}) CHECK(check(p.substr(0, cut)) != Reply::REASON_NONE);
    CHECK(check(p.substr(0, p.size() - 1)) == Reply::MALFORMED);
  }
}

namespace {
struct ProcessorFixture {
  FixedClock clock;
  Keys keys;
  outrider::test::TempDir dir{"proc"};
  boost::asio::io_context io;
  CommandVerifier verifier{"n1", keys.trusted(), VerifierLimits{}, clock};
  std::optional<CommandJournal> journal{*CommandJournal::open(dir / "journal")};
  std::vector<Reply> replies;
  int statusCalls = 0;
  std::unique_ptr<CommandProcessor> proc = makeProcessor();

  std::unique_ptr<CommandProcessor> makeProcessor(ProcessorOptions o = {}) {
    return std::make_unique<CommandProcessor>(
        io, "n1", verifier, *journal, clock, o, [this](const Reply& r) { replies.push_back(r); },
        [this] {
          ++statusCalls;
          outrider::v1::NodeStatus s;
          s.set_node_id("n1");
          return s;
        });
  }
  std::vector<Reply> repliesFor(const std::string& id) const {
    std::vector<Reply> out;
    for (const auto& r : replies)
      if (r.command_id() == id) out.push_back(r);
    return out;
  }
  void runUntilIdle() {
    io.restart();
    io.run_for(std::chrono::seconds(10));
  }
};
}  // namespace

TEST_CASE_FIXTURE(ProcessorFixture, "an immediate ping answers with its pong directly") {
  auto body = pingBody(clock, "p-1");
  body.mutable_ping()->set_payload("xyz");
  proc->handle(seal(body, keys.op));
  runUntilIdle();
  auto rs = repliesFor("p-1");
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].kind() == Reply::SUCCEEDED);
  CHECK(rs[0].pong().payload() == "xyz");
  CHECK(rs[0].seq() == 0);
  CHECK(rs[0].node_id() == "n1");
}

TEST_CASE_FIXTURE(ProcessorFixture, "a redelivered command runs once and gets its recorded reply") {
  auto env = seal(pingBody(clock, "p-2"), keys.op);
  proc->handle(env);
  runUntilIdle();
  proc->handle(env);
  runUntilIdle();
  auto rs = repliesFor("p-2");
  REQUIRE(rs.size() == 2);  // succeeded, and the recorded succeeded again
  CHECK(rs[1].kind() == Reply::SUCCEEDED);
  CHECK(rs[1].SerializeAsString() == rs[0].SerializeAsString());
  CHECK(proc->counters().succeeded == 1);
  CHECK(proc->counters().redelivered == 1);
}

TEST_CASE_FIXTURE(ProcessorFixture, "the same id with a different body is a replay") {
  proc->handle(seal(pingBody(clock, "p-3"), keys.op));
  runUntilIdle();
  auto other = pingBody(clock, "p-3");
  other.mutable_ping()->set_payload("different");
  proc->handle(seal(other, keys.op));
  runUntilIdle();
  auto rs = repliesFor("p-3");
  REQUIRE(rs.size() == 2);
  CHECK(rs[1].kind() == Reply::REJECTED);
  CHECK(rs[1].reason() == Reply::REPLAYED);
}

TEST_CASE_FIXTURE(ProcessorFixture, "the journal survives a restart: no second execution") {
  auto env = seal(pingBody(clock, "p-4"), keys.op);
  proc->handle(env);
  runUntilIdle();
  proc.reset();
  journal.reset();
  journal.emplace(*CommandJournal::open(dir / "journal"));
  proc = makeProcessor();
  replies.clear();
  proc->handle(env);
  runUntilIdle();
  REQUIRE(replies.size() == 1);
  CHECK(replies[0].kind() == Reply::SUCCEEDED);
  CHECK(proc->counters().succeeded == 0);
}

TEST_CASE_FIXTURE(ProcessorFixture, "a command interrupted by a restart is answered failed, not re-run") {
  auto body = pingBody(clock, "p-5");
  REQUIRE(journal->recordAccepted("p-5", crypto::sha256(body.SerializeAsString()), body.expires_at_ms(),
                                  Durability::Sync)
              .ok());
  proc->handle(seal(body, keys.op));
  runUntilIdle();
  REQUIRE(replies.size() == 1);
  CHECK(replies[0].kind() == Reply::FAILED);
  CHECK(replies[0].message().find("interrupted") != std::string::npos);
}

TEST_CASE_FIXTURE(ProcessorFixture, "a held ping reports progress, then succeeds") {
  auto body = pingBody(clock, "p-6");
  body.mutable_ping()->set_hold_ms(300);
  proc->handle(seal(body, keys.op));
  runUntilIdle();
  auto rs = repliesFor("p-6");
  REQUIRE(rs.size() >= 3);
  CHECK(rs.front().kind() == Reply::ACCEPTED);
  CHECK(rs[1].kind() == Reply::PROGRESS);
  CHECK(rs.back().kind() == Reply::SUCCEEDED);
  for (std::size_t i = 0; i < rs.size(); ++i) CHECK(rs[i].seq() == i);
}

TEST_CASE_FIXTURE(ProcessorFixture, "a command past its deadline fails") {
  auto body = pingBody(clock, "p-7");
  body.mutable_ping()->set_hold_ms(5000);
  body.set_deadline_ms(100);
  proc->handle(seal(body, keys.op));
  runUntilIdle();
  auto rs = repliesFor("p-7");
  REQUIRE(!rs.empty());
  CHECK(rs.back().kind() == Reply::FAILED);
  CHECK(rs.back().message().find("deadline") != std::string::npos);
  CHECK(proc->inFlight() == 0);
}

TEST_CASE_FIXTURE(ProcessorFixture, "too many in flight is BUSY") {
  proc = makeProcessor(ProcessorOptions{.maxInFlight = 1});
  auto a = pingBody(clock, "b-1");
  a.mutable_ping()->set_hold_ms(200);
  proc->handle(seal(a, keys.op));
  proc->handle(seal(pingBody(clock, "b-2"), keys.op));
  auto rs = repliesFor("b-2");
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].reason() == Reply::BUSY);
  runUntilIdle();
  CHECK(repliesFor("b-1").back().kind() == Reply::SUCCEEDED);
}

TEST_CASE_FIXTURE(ProcessorFixture, "rejections never stop the next good command") {
  proc->handle("");
  proc->handle(std::string(200, '\xff'));
  proc->handle(seal(pingBody(clock, "x-1"), keys.stranger));
  proc->handle(seal(pingBody(clock, "ok-1"), keys.op));
  runUntilIdle();
  CHECK(proc->counters().rejected == 3);
  CHECK(repliesFor("ok-1").back().kind() == Reply::SUCCEEDED);
}

TEST_CASE_FIXTURE(ProcessorFixture, "get_status answers with the node status") {
  auto b = pingBody(clock, "s-1");
  b.mutable_get_status();
  proc->handle(seal(b, keys.op));
  runUntilIdle();
  auto rs = repliesFor("s-1");
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].status().node_id() == "n1");
  CHECK(statusCalls == 1);
}

TEST_CASE("a full journal answers BUSY and runs nothing") {
  FixedClock clock;
  Keys keys;
  outrider::test::TempDir dir{"full"};
  boost::asio::io_context io;
  CommandVerifier verifier{"n1", keys.trusted(), VerifierLimits{}, clock};
  auto journal = *CommandJournal::open(dir / "journal", JournalOptions{.maxEntries = 2});
  std::vector<Reply> replies;
  CommandProcessor proc(io, "n1", verifier, journal, clock, {}, [&](const Reply& r) { replies.push_back(r); },
                        [] { return outrider::v1::NodeStatus(); });
  for (const char* id : {"f-1", "f-2", "f-3"}) proc.handle(seal(pingBody(clock, id), keys.op));
  REQUIRE(replies.size() == 3);
  CHECK(replies[0].kind() == Reply::SUCCEEDED);
  CHECK(replies[1].kind() == Reply::SUCCEEDED);
  CHECK(replies[2].kind() == Reply::REJECTED);
  CHECK(replies[2].reason() == Reply::BUSY);
  CHECK(proc.counters().succeeded == 2);
}
