// The node's WireGuard key file and the persisted manifest tunnels: made once with mode 0600, the same
// key after a reload, a corrupted file refused (and left alone); state with a checksum.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <fstream>

#include "outrider/common/atomic_file.hpp"
#include "outrider/netd/manager.hpp"
#include "outrider/netd/wg_key.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::netd;

TEST_CASE("X25519 public key matches the RFC 7748 test vector") {
  auto priv = keyFromHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  REQUIRE(priv.ok());
  auto pub = publicKeyOf(*priv);
  REQUIRE(pub.ok());
  CHECK(keyHex(*pub) == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
}

TEST_CASE("key file: created 0600 in a 0700 directory, the same key after reload, distinct per node") {
  test::TempDir dir("netdkey");
  auto file = dir / "state" / "wg.key";
  auto a = loadOrCreateKey(file);
  REQUIRE_MESSAGE(a.ok(), (a.ok() ? "" : a.error().message));
  struct stat st{};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat(file.parent_path().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  auto text = readFile(file);
  REQUIRE(text.ok());
  CHECK(*text == keyBase64(a->privateKey) + "\n");  // the format `wg genkey` writes
  CHECK(*publicKeyOf(a->privateKey) == a->publicKey);

  auto b = loadOrCreateKey(file);
  REQUIRE(b.ok());
  CHECK(b->privateKey == a->privateKey);
  CHECK(b->publicKey == a->publicKey);

  auto other = loadOrCreateKey(dir / "other.key");
  REQUIRE(other.ok());
  CHECK(other->privateKey != a->privateKey);
}

TEST_CASE("key file: a too-open mode is tightened to 0600") {
  test::TempDir dir("netdkey");
  auto file = dir / "wg.key";
  REQUIRE(loadOrCreateKey(file).ok());
  REQUIRE(::chmod(file.c_str(), 0644) == 0);
  REQUIRE(loadOrCreateKey(file).ok());
  struct stat st{};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("key file: corrupted content is a clear error and the file is not replaced") {
  test::TempDir dir("netdkey");
  auto file = dir / "wg.key";
  for (std::string bad : {std::string("not a key\n"), std::string("AAAA\n"), std::string(""), std::string("\x01\x02", 2)}) {
    { std::ofstream(file, std::ios::trunc) << bad; }
    auto k = loadOrCreateKey(file);
    REQUIRE_FALSE(k.ok());
    CHECK(k.error().message.find(file.string()) != std::string::npos);
    CHECK(k.error().message.find("does not hold a WireGuard private key") != std::string::npos);
    CHECK(*readFile(file) == bad);
  }
}

TEST_CASE("persisted manifest tunnels: round trip; a flipped byte or a foreign file is refused") {
  v1::TunnelApplyRequest req;
  req.set_manifest_version(7);
  auto* t = req.add_tunnels();
  t->set_interface("wgo-edge");
  t->add_addresses("10.99.100.10/24");
  auto data = encodeTunnelState(req);
  auto back = decodeTunnelState(data);
  REQUIRE(back.ok());
  CHECK(back->manifest_version() == 7);
  CHECK(back->tunnels(0).interface() == "wgo-edge");

  auto flipped = data;
  flipped.back() ^= 0x01;
  auto bad = decodeTunnelState(flipped);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("checksum") != std::string::npos);
  CHECK_FALSE(decodeTunnelState(data.substr(0, data.size() - 3)).ok());
  CHECK_FALSE(decodeTunnelState("hello\n").ok());
  CHECK_FALSE(decodeTunnelState("").ok());
}

TEST_CASE("endpoints resolve to numbers; an unresolvable one is an error naming the host") {
  auto ep = resolveEndpoint("10.99.1.2:51820");
  REQUIRE(ep.ok());
  CHECK(ep->str() == "10.99.1.2:51820");
  auto v6 = resolveEndpoint("[fd00::2]:51821");
  REQUIRE(v6.ok());
  CHECK(v6->str() == "[fd00::2]:51821");
  auto local = resolveEndpoint("localhost:51820");
  REQUIRE(local.ok());
  auto bad = resolveEndpoint("no-such-host.invalid:51820");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("no-such-host.invalid") != std::string::npos);
}
