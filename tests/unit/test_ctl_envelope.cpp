// Signed command envelopes as outriderctl builds them, and ping statistics.
#include <doctest/doctest.h>

#include <regex>
#include <set>

#include "outrider/common/crypto.hpp"
#include "outrider/ctl/command_client.hpp"
#include "outrider/ctl/ping.hpp"

using namespace outrider;
using namespace outrider::ctl;

TEST_CASE("command ids are unique and well-formed") {
  const std::regex shape("ctl-[0-9a-f]{16}");
  std::set<std::string> seen;
  for (int i = 0; i < 2000; ++i) {
    std::string id = newCommandId();
    CHECK(std::regex_match(id, shape));
    CHECK(validCommandId(id));
    CHECK(seen.insert(id).second);
  }
  CHECK_FALSE(validCommandId(""));
  CHECK_FALSE(validCommandId(std::string(129, 'a')));
  CHECK_FALSE(validCommandId("a b"));
  CHECK(validCommandId("a.b_c:d-1"));
}

TEST_CASE("a command body carries node, id, validity and deadline") {
  auto body = makeCommandBody("n1", std::chrono::milliseconds(2500), 1'700'000'000'000);
  CHECK(body.node_id() == "n1");
  CHECK(body.command_id().rfind("ctl-", 0) == 0);
  CHECK(body.issued_at_ms() == 1'700'000'000'000);
  CHECK(body.expires_at_ms() == 1'700'000'002'500);
  CHECK(body.deadline_ms() == 2500);
}

TEST_CASE("the envelope body parses back and the signature verifies with the public key") {
  auto key = crypto::SigningKey::generate();
  REQUIRE(key.ok());
  auto body = makeCommandBody("n1", std::chrono::seconds(10), 1'700'000'000'000);
  body.mutable_ping()->set_hold_ms(250);
  auto env = signEnvelope(body, *key);

  // Over the wire and back.
  v1::CommandEnvelope received;
  REQUIRE(received.ParseFromString(env.SerializeAsString()));
  v1::CommandBody parsed;
  REQUIRE(parsed.ParseFromString(received.body()));
  CHECK(parsed.node_id() == "n1");
  CHECK(parsed.command_id() == body.command_id());
  CHECK(parsed.has_ping());
  CHECK(parsed.ping().hold_ms() == 250);
  CHECK(parsed.expires_at_ms() == body.expires_at_ms());

  // The node's view: only the public key, from its PEM or its inline form.
  auto pub = crypto::VerifyKey::fromPem(key->publicKey().toPem());
  REQUIRE(pub.ok());
  CHECK(received.signature().size() == 64);
  CHECK(pub->verify(received.body(), received.signature()));
  auto inlineKey = crypto::VerifyKey::parse("ed25519:" + crypto::base64(key->publicKey().raw()));
  REQUIRE(inlineKey.ok());
  CHECK(inlineKey->verify(received.body(), received.signature()));

  // key_id: hex of the first 8 bytes of SHA-256 of the raw public key.
  auto digest = crypto::sha256(pub->raw());
  CHECK(received.key_id() == crypto::hex(std::span<const std::uint8_t>(digest.data(), 8)));
  CHECK(received.key_id() == key->publicKey().id());

  // Any change to the body breaks the signature; another key does not verify it.
  std::string tampered = received.body();
  tampered.back() ^= 1;
  CHECK_FALSE(pub->verify(tampered, received.signature()));
  auto other = crypto::SigningKey::generate();
  REQUIRE(other.ok());
  CHECK_FALSE(other->publicKey().verify(received.body(), received.signature()));
}

TEST_CASE("failure text of final replies") {
  CommandResult r;
  r.reply.set_kind(v1::CommandReply::SUCCEEDED);
  CHECK(r.succeeded());
  CHECK(r.failureText().empty());
  r.reply.set_kind(v1::CommandReply::FAILED);
  r.reply.set_message("disk full");
  CHECK(r.failureText() == "failed: disk full");
  r.reply.set_kind(v1::CommandReply::REJECTED);
  r.reply.set_reason(v1::CommandReply::BAD_SIGNATURE);
  r.reply.set_message("signature does not verify");
  CHECK(r.failureText() == "rejected: BAD_SIGNATURE: signature does not verify");
}

TEST_CASE("ping statistics use nearest-rank percentiles") {
  std::vector<double> rtts;
  for (int i = 100; i >= 1; --i) rtts.push_back(i);
  auto s = computeStats(rtts, 103);
  CHECK(s.sent == 103);
  CHECK(s.ok == 100);
  CHECK(s.minMs == 1);
  CHECK(s.p50Ms == 50);
  CHECK(s.p90Ms == 90);
  CHECK(s.p99Ms == 99);
  CHECK(s.maxMs == 100);

  auto one = computeStats({0.42}, 1);
  CHECK(one.minMs == 0.42);
  CHECK(one.p50Ms == 0.42);
  CHECK(one.p99Ms == 0.42);
  CHECK(one.maxMs == 0.42);

  auto none = computeStats({}, 3);
  CHECK(none.sent == 3);
  CHECK(none.ok == 0);
  CHECK(none.maxMs == 0);

  auto four = computeStats({4, 1, 3, 2}, 4);
  CHECK(four.p50Ms == 2);
  CHECK(four.p90Ms == 4);
}

TEST_CASE("ping statistics output") {
  auto s = computeStats({1.0, 2.0, 3.0}, 3);
  std::string text = formatPingStats(s, false);
  CHECK(text.find("sent 3, ok 3") != std::string::npos);
  CHECK(text.find("min 1.00") != std::string::npos);
  CHECK(text.find("max 3.00") != std::string::npos);
  CHECK(formatPingStats(s, true) ==
        "{\"sent\":3,\"ok\":3,\"min_ms\":1.000,\"p50_ms\":2.000,\"p90_ms\":3.000,\"p99_ms\":3.000,\"max_ms\":3.000}\n");
}
