// The provisioning bundle (signed by outriderctl, verified by the agent), the enrollment proof and
// certificate path, and the hub's decision for one enrollment request. No broker: a CA made with the
// openssl CLI (TestCa), files in a temp dir.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "outrider/agent/provision_bundle.hpp"
#include "outrider/agent/provision_x509.hpp"
#include "outrider/agent/update.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/ctl/enroll.hpp"
#include "outrider/ctl/provision.hpp"
#include "support/mqtt_fixture.hpp"
#include "support/process.hpp"

using namespace outrider;
namespace prov = outrider::agent::provision;
namespace v1 = outrider::v1;

namespace {

struct FixedClock final : Clock {
  std::int64_t now = 1'800'000'000'000;
  std::int64_t nowMs() const override { return now; }
};

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct World {
  test::TempDir dir{"prov-unit"};
  test::TestCa ca{dir / "pki"};
  crypto::SigningKey prov = *crypto::SigningKey::generate();
  crypto::SigningKey op = *crypto::SigningKey::generate();

  v1::ProvisioningBundle bundle(std::string node = "edge-1", std::int64_t issued = 1'800'000'000'000) {
    v1::ProvisioningBundle b;
    b.set_format_version(1);
    b.set_bundle_id(std::string(32, 'a'));
    b.set_node_id(node);
    b.set_issued_at_ms(issued);
    b.set_expires_at_ms(issued + 3'600'000);
    b.add_hub_brokers("mqtts://hub-a.example:8883");
    b.add_enroll_brokers("mqtts://hub-a.example:8884");
    b.set_ca_pem(slurp(ca.caFile()));
    b.set_enroll_token(std::string(32, '\x07'));
    b.add_operator_keys("ed25519:" + crypto::base64(op.publicKey().raw()));
    return b;
  }
};

}  // namespace

TEST_CASE("a bundle signed by outriderctl verifies on the node and records its id and hash") {
  World w;
  auto file = ctl::encodeBundleFile(w.bundle(), w.prov);
  auto v = prov::verifyBundle(file, w.prov.publicKey());
  REQUIRE_MESSAGE(v.ok(), (v.ok() ? "" : v.error().message));
  CHECK(v->bundle.node_id() == "edge-1");
  CHECK(v->record().starts_with(std::string(32, 'a') + " sha256:"));
  CHECK(v->record().size() == 32 + 8 + 64);
  CHECK(prov::checkBundleTime(*v, 1'800'000'000'000 + 1000).ok());
  auto late = prov::checkBundleTime(*v, 1'800'000'000'000 + 3'600'001);
  REQUIRE_FALSE(late.ok());
  CHECK(late.error().code == prov::kBundleExpired);
  CHECK(late.error().message.find("expired") != std::string::npos);
}

TEST_CASE("every single changed byte is refused, and so is another signing key or a cut file") {
  World w;
  const auto file = ctl::encodeBundleFile(w.bundle(), w.prov);
  for (std::size_t i = 0; i < file.size(); ++i) {
    for (unsigned char flip : {0x01, 0x80}) {
      auto bad = file;
      bad[i] = static_cast<char>(static_cast<unsigned char>(bad[i]) ^ flip);
      auto v = prov::verifyBundle(bad, w.prov.publicKey());
      CHECK_MESSAGE(!v.ok(), "byte " << i << " changed was accepted");
    }
  }
  auto foreign = ctl::encodeBundleFile(w.bundle(), *crypto::SigningKey::generate());
  auto v = prov::verifyBundle(foreign, w.prov.publicKey());
  REQUIRE_FALSE(v.ok());
  CHECK(v.error().code == prov::kBundleForeignKey);
  CHECK(v.error().message.find("signed by another key") != std::string::npos);

  auto changed = file;
  changed[changed.size() - 3] ^= 0x10;
  v = prov::verifyBundle(changed, w.prov.publicKey());
  REQUIRE_FALSE(v.ok());
  CHECK(v.error().code == prov::kBundleBadSignature);
  CHECK(v.error().message.find("changed after signing") != std::string::npos);

  for (std::size_t n : {std::size_t(0), std::size_t(3), std::size_t(79), file.size() - 1}) {
    v = prov::verifyBundle(std::string_view(file).substr(0, n), w.prov.publicKey());
    CHECK_FALSE(v.ok());
  }
  CHECK_FALSE(prov::verifyBundle(file + "x", w.prov.publicKey()).ok());
  CHECK_FALSE(prov::verifyBundle(std::string(prov::kMaxBundleBytes + 1, 'O'), w.prov.publicKey()).ok());
}

TEST_CASE("a correctly signed bundle with bad contents is still refused") {
  World w;
  auto refused = [&](v1::ProvisioningBundle b, std::string_view what) {
    auto v = prov::verifyBundle(ctl::encodeBundleFile(b, w.prov), w.prov.publicKey());
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == prov::kBundleMalformed);
    CHECK_MESSAGE(v.error().message.find(what) != std::string::npos, v.error().message);
  };
  auto b = w.bundle("../etc");
  refused(b, "invalid node id");
  b = w.bundle();
  b.set_format_version(2);
  refused(b, "bundle format 2");
  b = w.bundle();
  b.set_hub_brokers(0, "mqtt://hub-a.example:1883");
  refused(b, "not TLS");
  b = w.bundle();
  b.clear_enroll_brokers();
  refused(b, "no enrollment broker");
  b = w.bundle();
  b.set_operator_keys(0, "/etc/shadow");
  refused(b, "is not ed25519:<base64>");
  b = w.bundle();
  b.set_ca_pem(slurp(w.ca.issueClient("leaf").cert));
  refused(b, "not a CA");
  b = w.bundle();
  b.set_enroll_token("short");
  refused(b, "not 32 bytes");
  b = w.bundle();
  b.set_expires_at_ms(b.issued_at_ms());
  refused(b, "expires before");
  b = w.bundle();
  b.mutable_manifest()->add_tunnels()->set_interface("wg-hub");
  refused(b, "manifest");
}

TEST_CASE("the node's key and CSR, the hub's certificate, and the token proof") {
  World w;
  auto key = prov::makeNodeKey("edge-1");
  REQUIRE(key.ok());
  CHECK(key->keyPem.find("BEGIN PRIVATE KEY") != std::string::npos);
  auto ca = ctl::FleetCa::load(w.ca.caFile(), w.ca.dir() / "ca.key");
  REQUIRE_MESSAGE(ca.ok(), (ca.ok() ? "" : ca.error().message));
  auto keyHash = ca->checkRequest(key->csrDer, "edge-1");
  REQUIRE(keyHash.ok());
  auto wrongNode = ca->checkRequest(key->csrDer, "edge-2");
  REQUIRE_FALSE(wrongNode.ok());
  CHECK(wrongNode.error().message.find("is for 'edge-1'") != std::string::npos);
  CHECK_FALSE(ca->checkRequest("garbage", "edge-1").ok());
  auto tampered = key->csrDer;
  tampered[tampered.size() - 10] ^= 1;
  CHECK_FALSE(ca->checkRequest(tampered, "edge-1").ok());

  auto cert = ca->issue(key->csrDer, "edge-1", 30);
  REQUIRE(cert.ok());
  CHECK(cert->publicKeySha256 == *keyHash);
  const std::string caPem = slurp(w.ca.caFile());
  CHECK(prov::checkNodeCertificate(cert->pem, caPem, key->keyPem, "edge-1").ok());
  auto other = prov::makeNodeKey("edge-1");
  auto mismatch = prov::checkNodeCertificate(cert->pem, caPem, other->keyPem, "edge-1");
  REQUIRE_FALSE(mismatch.ok());
  CHECK(mismatch.error().message.find("public key") != std::string::npos);
  CHECK_FALSE(prov::checkNodeCertificate(cert->pem, caPem, key->keyPem, "edge-2").ok());
  test::TestCa otherCa{w.dir / "other-ca"};
  CHECK_FALSE(prov::checkNodeCertificate(cert->pem, slurp(otherCa.caFile()), key->keyPem, "edge-1").ok());

  const std::string token(32, '\x42');
  auto proof = prov::enrollProof(token, "edge-1", "r1", key->csrDer);
  CHECK(ctl::checkEnrollProof(token, "edge-1", "r1", key->csrDer, proof));
  CHECK_FALSE(ctl::checkEnrollProof(token, "edge-1", "r2", key->csrDer, proof));
  CHECK_FALSE(ctl::checkEnrollProof(token, "edge-1", "r1", other->csrDer, proof));
  CHECK_FALSE(ctl::checkEnrollProof(std::string(32, '\x43'), "edge-1", "r1", key->csrDer, proof));
  CHECK(prov::enrollTokenId(token) == ctl::tokenIdOf(token));
}

TEST_CASE("enroll serve's decision: tokens once, until expiry, for their node, with a valid proof") {
  World w;
  FixedClock clock;
  const auto tokens = w.dir / "tokens.toml";
  const auto db = w.dir / "enrolled.toml";
  const std::string secret = prov::randomBytes(32);
  REQUIRE(ctl::TokenStore::add(tokens, {ctl::tokenIdOf(secret), secret, "edge-1", "b1", clock.now, clock.now + 60'000},
                               clock.now)
              .ok());
  CHECK((std::filesystem::status(tokens).permissions() & std::filesystem::perms::others_read) ==
        std::filesystem::perms::none);
  auto stored = ctl::TokenStore::read(tokens);
  REQUIRE(stored.ok());
  REQUIRE(stored->size() == 1);
  CHECK((*stored)[0].secret == secret);

  ctl::EnrollService svc(*ctl::FleetCa::load(w.ca.caFile(), w.ca.dir() / "ca.key"), {tokens, db, 30}, clock);
  auto request = [&](const std::string& node, const prov::NodeKey& key, std::string tokenSecret, std::string rid) {
    v1::EnrollRequest r;
    r.set_format_version(1);
    r.set_node_id(node);
    r.set_request_id(rid);
    r.set_token_id(ctl::tokenIdOf(tokenSecret));
    r.set_proof(prov::enrollProof(tokenSecret, node, rid, key.csrDer));
    r.set_csr_der(key.csrDer);
    r.set_bundle_id("b1");
    return svc.handle("outrider/v1/enroll/" + node + "/req", r.SerializeAsString());
  };
  auto key = *prov::makeNodeKey("edge-1");

  auto d = request("edge-1", key, std::string(32, 'x'), "r0");
  REQUIRE(d.response);
  CHECK(d.response->status() == v1::EnrollResponse::REFUSED);
  CHECK(d.response->reason() == "unknown enrollment token");
  CHECK(d.topic == "outrider/v1/enroll/edge-1/resp");

  auto wrongNodeKey = *prov::makeNodeKey("edge-2");
  d = request("edge-2", wrongNodeKey, secret, "r1");
  CHECK(d.response->status() == v1::EnrollResponse::REFUSED);
  CHECK(d.response->reason() == "the token is for node 'edge-1'");

  v1::EnrollRequest forged;
  forged.set_format_version(1);
  forged.set_node_id("edge-1");
  forged.set_request_id("r2");
  forged.set_token_id(ctl::tokenIdOf(secret));
  forged.set_proof(std::string(32, '\0'));
  forged.set_csr_der(key.csrDer);
  d = svc.handle("outrider/v1/enroll/edge-1/req", forged.SerializeAsString());
  CHECK(d.response->reason() == "the token proof does not verify");

  d = svc.handle("outrider/v1/enroll/edge-1/req", "\xff\xff garbage");
  REQUIRE(d.response);
  CHECK(d.response->status() == v1::EnrollResponse::REFUSED);
  CHECK_FALSE(svc.handle("outrider/v1/nodes/edge-1/cmd", "x").response);

  d = request("edge-1", key, secret, "r3");
  REQUIRE(d.response->status() == v1::EnrollResponse::ISSUED);
  CHECK(d.response->request_id() == "r3");
  CHECK(prov::checkNodeCertificate(d.response->certificate_pem(), slurp(w.ca.caFile()), key.keyPem, "edge-1").ok());
  const std::string issued = d.response->certificate_pem();

  // The same key again (its answer was lost): the same certificate, nothing new.
  d = request("edge-1", key, secret, "r4");
  REQUIRE(d.response->status() == v1::EnrollResponse::ISSUED);
  CHECK(d.response->certificate_pem() == issued);

  // Another key with the spent token: refused.
  auto thief = *prov::makeNodeKey("edge-1");
  d = request("edge-1", thief, secret, "r5");
  CHECK(d.response->status() == v1::EnrollResponse::REFUSED);
  CHECK(d.response->reason().find("already used") != std::string::npos);
  auto rec = ctl::EnrollDb::read(db);
  REQUIRE(rec.ok());
  REQUIRE(rec->nodes.size() == 1);
  CHECK(rec->nodes[0].node == "edge-1");
  CHECK(rec->spent.size() == 1);

  // An expired token.
  const std::string late = prov::randomBytes(32);
  REQUIRE(ctl::TokenStore::add(tokens, {ctl::tokenIdOf(late), late, "edge-1", "b2", clock.now, clock.now + 1000},
                               clock.now)
              .ok());
  clock.now += 2000;
  d = request("edge-1", *prov::makeNodeKey("edge-1"), late, "r6");
  CHECK(d.response->status() == v1::EnrollResponse::REFUSED);
  CHECK(d.response->reason().find("expired") != std::string::npos);
}

TEST_CASE("provision and enroll take their own options; the rest goes to the common parser") {
  std::vector<std::string> args{"--broker", "mqtts://h:1", "provision", "image", "--hub", "mqtts://a:1",
                                "--hub=mqtts://b:1", "--sign-key", "prov.key", "--json", "--out", "x.img"};
  auto a = ctl::takeProvisioningArgs(args);
  CHECK(a.taken);
  CHECK(a.options.count("hub") == 2);
  CHECK(a.options.find("sign-key")->second == "prov.key");
  CHECK(a.rest == std::vector<std::string>{"--broker", "mqtts://h:1", "provision", "image", "--json"});
  std::vector<std::string> ping{"--sign-key", "op.key", "ping", "n1"};
  auto p = ctl::takeProvisioningArgs(ping);
  CHECK_FALSE(p.taken);
  CHECK(p.rest == ping);
  std::vector<std::string> serve{"enroll", "serve", "--sign-key", "op.key", "--db", "d.toml", "--tokens"};
  auto s = ctl::takeProvisioningArgs(serve);
  CHECK(s.taken);
  CHECK(s.options.count("sign-key") == 0);  // not enroll's: left for the common parser
  CHECK(s.error == "option --tokens needs a value");

  CHECK(ctl::parseDuration("24h", "--token-ttl")->count() == 86400);
  CHECK(ctl::parseDuration("90m", "t")->count() == 5400);
  CHECK(ctl::parseDuration("7d", "t")->count() == 7 * 86400);
  CHECK(ctl::parseDuration("15", "t")->count() == 15);
  CHECK_FALSE(ctl::parseDuration("0s", "t").ok());
  CHECK_FALSE(ctl::parseDuration("1y", "t").ok());
  CHECK_FALSE(ctl::parseDuration("400d", "t").ok());
  CHECK_FALSE(ctl::parseDuration("", "t").ok());
}

TEST_CASE("the root updater trusts operator keys only from files the agent cannot change") {
  if (::geteuid() != 0) {
    MESSAGE("needs root: the files must be root's");
    return;
  }
  World w;
  namespace upd = outrider::agent::update;
  auto cfgOp = *crypto::SigningKey::generate();
  auto cfg = w.dir / "agent.toml";
  std::ofstream(cfg) << "[node]\nid = \"edge-1\"\n[commands]\noperator_keys = [\"ed25519:"
                     << crypto::base64(cfgOp.publicKey().raw()) << "\"]\n";
  ::chmod(cfg.c_str(), 0644);
  auto provPub = w.dir / "provisioning.pub";
  std::ofstream(provPub) << w.prov.publicKey().toPem();
  ::chmod(provPub.c_str(), 0644);
  auto bundle = w.dir / "bundle.bin";
  std::ofstream(bundle, std::ios::binary) << ctl::encodeBundleFile(w.bundle(), w.prov);

  auto keys = upd::updaterKeys(cfg, bundle, provPub, "edge-1");
  REQUIRE(keys);
  CHECK(keys->size() == 2);
  CHECK(keys->count(cfgOp.publicKey().id()) == 1);
  CHECK(keys->count(w.op.publicKey().id()) == 1);  // from the bundle, which verified

  // agent.toml writable by others: its keys do not count.
  ::chmod(cfg.c_str(), 0666);
  keys = upd::updaterKeys(cfg, bundle, provPub, "edge-1");
  REQUIRE(keys);
  CHECK(keys->count(cfgOp.publicKey().id()) == 0);
  CHECK(keys->count(w.op.publicKey().id()) == 1);
  ::chmod(cfg.c_str(), 0644);

  // A bundle for another node, one signed by another key, one changed: not one of their keys counts.
  std::ofstream(bundle, std::ios::binary | std::ios::trunc) << ctl::encodeBundleFile(w.bundle("edge-2"), w.prov);
  CHECK(upd::updaterKeys(cfg, bundle, provPub, "edge-1")->size() == 1);
  std::ofstream(bundle, std::ios::binary | std::ios::trunc)
      << ctl::encodeBundleFile(w.bundle(), *crypto::SigningKey::generate());
  CHECK(upd::updaterKeys(cfg, bundle, provPub, "edge-1")->size() == 1);
  auto changed = ctl::encodeBundleFile(w.bundle(), w.prov);
  changed[changed.size() / 2] ^= 0x01;
  std::ofstream(bundle, std::ios::binary | std::ios::trunc) << changed;
  CHECK(upd::updaterKeys(cfg, bundle, provPub, "edge-1")->size() == 1);
  // No bundle kept (a node configured by hand): the configuration's keys alone.
  std::filesystem::remove(bundle);
  CHECK(upd::updaterKeys(cfg, bundle, provPub, "edge-1")->size() == 1);
  // A broken key in agent.toml is an error, not a silent gap.
  std::ofstream(cfg, std::ios::trunc) << "[commands]\noperator_keys = [\"ed25519:AAAA\"]\n";
  CHECK_FALSE(upd::updaterKeys(cfg, bundle, provPub, "edge-1"));
}
