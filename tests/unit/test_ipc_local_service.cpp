#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <string>
#include <vector>

#include "outrider/common/local_service.hpp"
#include "outrider/common/version.hpp"
#include "support/process.hpp"
#include "unit/test_ipc_support.hpp"

using namespace outrider;
using outrider::test::callAndWait;
using outrider::test::runUntil;
using outrider::v1::LocalError;
using outrider::v1::LocalReply;
using outrider::v1::LocalRequest;

namespace {

std::string configError(std::string_view text) {
  try {
    auto r = ConfigReader::parse(text, "vmm.toml");
    (void)readLocalServiceConfig(r, "/run/outrider/vmm.sock");
    r.finish();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return {};
}

struct ServiceRig {
  ServiceRig() {
    cfg.socket = dir / "svc.sock";
    cfg.group = "";
  }
  outrider::test::TempDir dir{"ipc"};
  boost::asio::io_context io;
  LocalServiceConfig cfg;
};

}  // namespace

TEST_CASE("[api] and [log] defaults and values") {
  auto empty = ConfigReader::parse("", "vmm.toml");
  auto d = readLocalServiceConfig(empty, "/run/outrider/vmm.sock");
  empty.finish();
  CHECK(d.socket == "/run/outrider/vmm.sock");
  CHECK(d.group == "outrider");
  CHECK(d.logLevel == log::Level::info);

  auto set = ConfigReader::parse("[api]\nsocket = \"/tmp/x.sock\"\ngroup = \"ops\"\n[log]\nlevel = \"debug\"\n", "vmm.toml");
  auto v = readLocalServiceConfig(set, "/run/outrider/vmm.sock");
  set.finish();
  CHECK(v.socket == "/tmp/x.sock");
  CHECK(v.group == "ops");
  CHECK(v.logLevel == log::Level::debug);
}

TEST_CASE("bad [api] and [log] values name file, line and key") {
  auto typo = configError("[api]\nsocket = \"/tmp/x.sock\"\ngruop = \"ops\"\n");
  CHECK(typo.find("vmm.toml:3") != std::string::npos);
  CHECK(typo.find("api.gruop") != std::string::npos);
  auto type = configError("[api]\nsocket = 5\n");
  CHECK(type.find("vmm.toml:2") != std::string::npos);
  CHECK(type.find("api.socket") != std::string::npos);
  auto level = configError("[log]\nlevel = \"loud\"\n");
  CHECK(level.find("log.level") != std::string::npos);
  CHECK(level.find("loud") != std::string::npos);
}

TEST_CASE("health, unknown request types, registered handlers and events") {
  ServiceRig rig;
  LocalService svc(rig.io, "outrider-test", rig.cfg);
  svc.setHealth([] { return Health{false, "degraded on purpose"}; });
  auto st = svc.start();
  REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  ipc::Client client(rig.io, rig.cfg.socket);

  auto health = callAndWait(rig.io, client);
  REQUIRE(health.ok());
  REQUIRE(health->has_health());
  CHECK_FALSE(health->has_error());
  CHECK(health->health().daemon() == "outrider-test");
  CHECK(health->health().version() == std::string(version()));
  CHECK_FALSE(health->health().healthy());
  CHECK(health->health().detail() == "degraded on purpose");
  CHECK(health->health().uptime_s() < 60);

  // A body added to the contract later (field 99 here) arrives as "not set" at an older daemon.
  LocalRequest future;
  REQUIRE(future.ParseFromString(std::string("\x9a\x06\x00", 3)));
  REQUIRE(future.body_case() == LocalRequest::BODY_NOT_SET);
  auto unsupported = callAndWait(rig.io, client, future);
  REQUIRE(unsupported.ok());
  CHECK(unsupported->error().code() == LocalError::UNSUPPORTED);
  CHECK(unsupported->error().message().find("outrider-test") != std::string::npos);

  // A module's handler takes over its request type, and may answer later from the loop.
  svc.handle(LocalRequest::kHealth, [&rig](const ipc::PeerCred&, const LocalRequest&, ipc::Replier reply) {
    boost::asio::post(rig.io, [reply] { reply(ipc::errorReply(LocalError::NOT_FOUND, "later")); });
  });
  auto custom = callAndWait(rig.io, client);
  REQUIRE(custom.ok());
  CHECK(custom->error().code() == LocalError::NOT_FOUND);
  CHECK(custom->error().message() == "later");

  std::vector<v1::LocalEvent> got;
  client.subscribe([&](const v1::LocalEvent& ev) { got.push_back(ev); });
  REQUIRE(runUntil(rig.io, [&] { return svc.server()->subscriberCount() == 1; }));
  svc.publish("vm.state", "web-1", "running");
  svc.publish("vm.state", "web-1", "stopped");
  REQUIRE(runUntil(rig.io, [&] { return got.size() == 2; }));
  CHECK(got[0].source() == "outrider-test");
  CHECK(got[0].seq() + 1 == got[1].seq());
  CHECK(got[1].detail() == "stopped");
  CHECK(got[0].at_ms() > 0);

  svc.stop();
  CHECK_FALSE(std::filesystem::exists(rig.cfg.socket));
}

TEST_CASE("a group that does not exist is ignored; the service still starts") {
  ServiceRig rig;
  rig.cfg.group = "no-such-group-for-outrider-tests";
  LocalService svc(rig.io, "outrider-test", rig.cfg);
  auto st = svc.start();
  REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  ipc::Client client(rig.io, rig.cfg.socket);
  CHECK(callAndWait(rig.io, client).ok());
}

TEST_CASE("a second service on a live socket fails to start") {
  ServiceRig rig;
  LocalService a(rig.io, "outrider-a", rig.cfg);
  LocalService b(rig.io, "outrider-b", rig.cfg);
  REQUIRE(a.start().ok());
  auto st = b.start();
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find(rig.cfg.socket.string()) != std::string::npos);
}
