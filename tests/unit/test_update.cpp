// The agent's side of an update, against fakes of the rest of the agent: the resumable package
// transfer, the state files shared with the updater, the health verdict, and the update service's
// steps from install to the final reply (also in a later run of the agent that adopts the command).
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <fstream>

#include "outrider/agent/update.hpp"
#include "outrider/agent/update_service.hpp"
#include "outrider/common/atomic_file.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::agent;
using namespace outrider::agent::update;
using namespace outrider::test;
using namespace std::chrono_literals;
using Reply = v1::CommandReply;

namespace {

std::string bytes(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed * 7) & 0xff);
  return s;
}

FreeSpaceFn plenty() {
  return [](const fs::path&) -> Result<std::uint64_t> { return std::uint64_t{1} << 40; };
}

std::string rawDigest(const crypto::Sha256& d) { return std::string(reinterpret_cast<const char*>(d.data()), d.size()); }

std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

TEST_CASE("a package arrives in chunks, resumes where it stopped, and is kept only when its digest matches") {
  TempDir dir("update-store");
  const auto pkg = bytes(100'000, 1);
  const auto digest = crypto::sha256(pkg);

  {
    PackageStore store(dir / "update", 0, 1 << 20, plenty());
    auto o = store.offer(digest, pkg.size());
    REQUIRE(o);
    CHECK(o->phase() == "receiving");
    CHECK(o->have_bytes() == 0);
    auto c = store.chunk(digest, 0, std::string_view(pkg).substr(0, 40'000));
    REQUIRE(c);
    CHECK(c->have_bytes() == 40'000);
    // Out of order: refused, nothing written.
    auto bad = store.chunk(digest, 50'000, std::string_view(pkg).substr(50'000, 10'000));
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("holds 40000 bytes") != std::string::npos);
    CHECK_FALSE(store.package(digest));
  }
  // A later run of the agent (or another transfer attempt from the hub) resumes at 40000.
  PackageStore store(dir / "update", 0, 1 << 20, plenty());
  auto o = store.offer(digest, pkg.size());
  REQUIRE(o);
  CHECK(o->have_bytes() == 40'000);
  REQUIRE(store.chunk(digest, 40'000, std::string_view(pkg).substr(40'000, 40'000)));
  auto last = store.chunk(digest, 80'000, std::string_view(pkg).substr(80'000));
  REQUIRE(last);
  CHECK(last->phase() == "received");
  auto path = store.package(digest);
  REQUIRE(path);
  CHECK(*readFile(*path) == pkg);
  // Offered again: already complete.
  auto again = store.offer(digest, pkg.size());
  REQUIRE(again);
  CHECK(again->phase() == "received");
  CHECK(again->have_bytes() == pkg.size());
}

TEST_CASE("a package whose bytes do not hash to the offered digest is dropped and the transfer starts over") {
  TempDir dir("update-digest");
  const auto pkg = bytes(10'000, 2);
  const auto digest = crypto::sha256(pkg);
  PackageStore store(dir.path(), 0, 1 << 20, plenty());
  REQUIRE(store.offer(digest, pkg.size()));
  auto tampered = pkg;
  tampered[5000] ^= 1;
  auto r = store.chunk(digest, 0, tampered);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("starts over") != std::string::npos);
  CHECK_FALSE(store.package(digest));
  auto o = store.offer(digest, pkg.size());
  REQUIRE(o);
  CHECK(o->have_bytes() == 0);
}

TEST_CASE("an offer is refused before any byte moves when the disk cannot hold the update") {
  TempDir dir("update-space");
  const auto pkg = bytes(1 << 20, 3);
  const auto digest = crypto::sha256(pkg);
  std::uint64_t free = spaceNeeded(pkg.size(), 0, 8 << 20) - 1;
  PackageStore store(dir / "update", 8 << 20, 64 << 20,
                     [&](const fs::path&) -> Result<std::uint64_t> { return free; });
  auto r = store.offer(digest, pkg.size());
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("not enough disk space") != std::string::npos);
  std::error_code ec;
  CHECK(fs::is_empty(dir / "update", ec));
  free += 1;
  CHECK(store.offer(digest, pkg.size()));
  // Too large for the node at all.
  PackageStore small(dir / "update", 0, 1000, plenty());
  auto big = small.offer(digest, 1001);
  REQUIRE_FALSE(big);
  CHECK(big.error().message.find("larger than") != std::string::npos);
}

TEST_CASE("offering another package drops the earlier partial one") {
  TempDir dir("update-switch");
  PackageStore store(dir.path(), 0, 1 << 20, plenty());
  const auto a = bytes(5000, 4), b = bytes(6000, 5);
  REQUIRE(store.offer(crypto::sha256(a), a.size()));
  REQUIRE(store.chunk(crypto::sha256(a), 0, std::string_view(a).substr(0, 1000)));
  REQUIRE(store.offer(crypto::sha256(b), b.size()));
  auto back = store.offer(crypto::sha256(a), a.size());
  REQUIRE(back);
  CHECK(back->have_bytes() == 0);
}

TEST_CASE("update state and verdict files round-trip and refuse damage") {
  UpdateState s;
  s.commandId = "ctl-1";
  s.sha256 = std::string(64, 'a');
  s.packagePath = "/var/lib/outrider/agent/update/x.deb";
  s.fromVersion = "1.0";
  s.toVersion = "1.1";
  s.phase = Phase::rolledBack;
  s.reason = "health check failed: netd UNREACHABLE\nsecond line \\ here";
  s.deadlineAtMs = 123;
  s.healthDeadlineS = 30;
  s.baseline = {{"netd", "HEALTHY"}, {"vmm", "DEGRADED"}};
  auto back = UpdateState::decode(s.encode());
  REQUIRE(back);
  CHECK(back->reason == s.reason);
  CHECK(back->phase == Phase::rolledBack);
  CHECK(back->baseline == s.baseline);
  CHECK(back->deadlineAtMs == 123);
  CHECK_FALSE(UpdateState::decode("format=1\ncommand=x\nphase=exploded\n"));
  CHECK_FALSE(UpdateState::decode("format=2\n"));
  CHECK_FALSE(UpdateState::decode("format=1\ncommand=x\nsha256=" + std::string(64, 'a') + "\nphase=committed\ndeadline_at_ms=12x\n"));
  update::Verdict v{.commandId = "ctl-1", .healthy = false, .reason = "hub not reachable"};
  auto vb = update::Verdict::decode(v.encode());
  REQUIRE(vb);
  CHECK_FALSE(vb->healthy);
  CHECK(vb->reason == "hub not reachable");
}

TEST_CASE("health after an update: hub reachable, daemons no worse than before, the manifest's guests running") {
  HealthInputs in;
  in.hubConnected = true;
  in.baseline = {{"vmm", "DEGRADED"}, {"netd", "HEALTHY"}};
  in.daemons = {{"vmm", "DEGRADED"}, {"netd", "HEALTHY"}};
  in.guestsWanted = {"vm web", "container cache"};
  in.guestsActual = {{"vm web", "running"}, {"container cache", "running"}};
  CHECK(healthProblems(in).empty());

  auto h = in;
  h.hubConnected = false;
  CHECK(healthProblems(h) == std::vector<std::string>{"hub not reachable"});
  h = in;
  h.daemons["netd"] = "DEGRADED";  // healthy before, degraded after
  REQUIRE(healthProblems(h).size() == 1);
  CHECK(healthProblems(h)[0] == "netd DEGRADED (was HEALTHY before the update)");
  h = in;
  h.daemons.erase("vmm");
  CHECK(healthProblems(h)[0].find("vmm UNREACHABLE") == 0);
  h = in;
  h.guestsActual["vm web"] = "shutoff";
  h.guestsActual.erase("container cache");
  CHECK(healthProblems(h) == std::vector<std::string>{"vm web shutoff", "container cache missing"});
  h = in;
  h.guestsKnown = false;
  CHECK(healthProblems(h) == std::vector<std::string>{"guests: vmm cannot list them"});
}

namespace {

// The agent around the update service, faked: hooks record their event and succeed unless told.
struct FakeAgent {
  boost::asio::io_context io;
  TempDir dir{"update-svc"};
  bool hub = true;
  std::vector<v1::DaemonHealth> daemons;
  std::vector<std::string> hooksRun;
  std::string failingHook;
  std::vector<std::string> progress;
  std::vector<std::string> adopted;
  std::vector<std::pair<std::string, Reply>> adoptedReplies;
  int launches = 0;

  FakeAgent() {
    for (const char* n : {"vmm", "netd"}) {
      v1::DaemonHealth h;
      h.set_name(n);
      h.set_state(v1::DaemonHealth::HEALTHY);
      daemons.push_back(h);
    }
  }

  UpdateConfig cfg() {
    UpdateConfig c;
    c.dir = dir / "update";
    c.healthDeadline = 30s;
    return c;
  }

  UpdateHost host() {
    UpdateHost h;
    h.hubConnected = [this] { return hub; };
    h.daemons = [this] { return daemons; };
    h.manifest = [] { return std::optional<v1::NodeManifest>{}; };
    h.guests = [](auto done) { done(std::map<std::string, std::string>{}); };
    h.runHooks = [this](std::string event, hooks::HookEnv env, std::function<void(Result<hooks::RunResult>)> done) {
      hooksRun.push_back(event + " " + env["OUTRIDER_VERSION_FROM"] + "->" + env["OUTRIDER_VERSION_TO"]);
      hooks::RunResult r;
      r.event = *hooks::parseEvent(event);
      hooks::HookResult one;
      one.name = "10-check";
      one.exitCode = event == failingHook ? 3 : 0;
      r.hooks.push_back(one);
      if (event == failingHook) {
        r.aborted = true;
        r.abortReason = "aborted by 10-check: exit 3";
      }
      done(std::move(r));
    };
    h.progress = [this](const std::string&, std::string m, std::uint32_t) { progress.push_back(std::move(m)); };
    h.adopt = [this](const std::string& id) { adopted.push_back(id); };
    h.finishAdopted = [this](const std::string& id, Reply r) { adoptedReplies.emplace_back(id, std::move(r)); };
    h.launch = [this]() -> Status {
      ++launches;
      return {};
    };
    h.inspect = [](const fs::path&) -> Result<PackageInfo> { return PackageInfo{"outrider", "1.1", "amd64"}; };
    h.installedVersion = [](const std::string&) -> Result<std::string> { return std::string("1.0"); };
    h.arch = "amd64";
    return h;
  }

  /// A received package in the store; its digest.
  crypto::Sha256 receive(UpdateService& svc) {
    const auto pkg = bytes(3000, 9);
    const auto digest = crypto::sha256(pkg);
    v1::UpdateCommand offer;
    offer.set_op(v1::UpdateCommand::OFFER);
    offer.set_sha256(rawDigest(digest));
    offer.set_size(pkg.size());
    std::optional<Reply> r;
    svc.run("o1", offer, [&](Reply x) { r = x; });
    REQUIRE(r);
    REQUIRE(r->kind() == Reply::SUCCEEDED);
    v1::UpdateCommand chunk;
    chunk.set_op(v1::UpdateCommand::CHUNK);
    chunk.set_sha256(rawDigest(digest));
    chunk.set_data(pkg);
    r.reset();
    svc.run("c1", chunk, [&](Reply x) { r = x; });
    REQUIRE(r);
    REQUIRE(r->update().phase() == "received");
    return digest;
  }

  void runFor(std::chrono::milliseconds d) {
    io.restart();
    io.run_for(d);
  }
};

v1::UpdateCommand install(const crypto::Sha256& d) {
  v1::UpdateCommand c;
  c.set_op(v1::UpdateCommand::INSTALL);
  c.set_sha256(rawDigest(d));
  return c;
}

}  // namespace

TEST_CASE("install: a failing pre-update hook refuses the update and nothing is requested") {
  FakeAgent a;
  a.failingHook = "pre-update";
  UpdateService svc(a.io, a.cfg(), a.host(), plenty());
  auto d = a.receive(svc);
  std::optional<Reply> r;
  svc.run("i1", install(d), [&](Reply x) { r = x; });
  a.runFor(50ms);
  REQUIRE(r);
  CHECK(r->kind() == Reply::FAILED);
  CHECK(r->message().find("pre-update hooks refused the update") != std::string::npos);
  CHECK(r->message().find("nothing was installed") != std::string::npos);
  CHECK_FALSE(fs::exists(requestFile(a.cfg().dir)));
  CHECK(a.launches == 0);
  CHECK(a.hooksRun == std::vector<std::string>{"pre-update 1.0->1.1"});
}

TEST_CASE("install: request, health verdict after the restart, commit with boot-ok hooks and the final reply") {
  FakeAgent a;
  a.daemons[1].set_state(v1::DaemonHealth::DEGRADED);  // netd degraded before the update
  UpdateService svc(a.io, a.cfg(), a.host(), plenty());
  svc.tickInterval = 10ms;
  auto d = a.receive(svc);
  std::optional<Reply> r;
  svc.run("i1", install(d), [&](Reply x) { r = x; });
  a.runFor(50ms);
  CHECK_FALSE(r);
  CHECK(a.launches == 1);
  auto req = readState(requestFile(a.cfg().dir));
  REQUIRE(req);
  REQUIRE(*req);
  CHECK((*req)->fromVersion == "1.0");
  CHECK((*req)->toVersion == "1.1");
  CHECK((*req)->healthDeadlineS == 30);
  CHECK((*req)->baseline.at("netd") == "DEGRADED");

  // Another update meanwhile: refused.
  std::optional<Reply> other;
  svc.run("i2", install(d), [&](Reply x) { other = x; });
  REQUIRE(other);
  CHECK(other->message().find("an update is in progress (command i1)") != std::string::npos);

  // The updater took the request, installed and restarted: it waits for the verdict.
  auto s = **req;
  s.phase = Phase::awaitingHealth;
  s.restartedAtMs = nowMs();
  s.deadlineAtMs = s.restartedAtMs + 30'000;
  fs::remove(requestFile(a.cfg().dir));
  REQUIRE(writeState(stateFile(a.cfg().dir), s.encode()));
  a.runFor(100ms);
  auto v = readVerdict(verdictFile(a.cfg().dir));
  REQUIRE(v);
  REQUIRE(*v);
  CHECK((*v)->healthy);
  CHECK((*v)->commandId == "i1");
  CHECK_FALSE(r);

  s.phase = Phase::committed;
  REQUIRE(writeState(stateFile(a.cfg().dir), s.encode()));
  a.runFor(100ms);
  REQUIRE(r);
  CHECK(r->kind() == Reply::SUCCEEDED);
  CHECK(r->update().phase() == "committed");
  CHECK(r->message().find("committed: outrider 1.1 (was 1.0)") == 0);
  CHECK(a.hooksRun.back() == "boot-ok 1.0->1.1");
  CHECK(fs::exists(lastFile(a.cfg().dir)));
  CHECK_FALSE(fs::exists(stateFile(a.cfg().dir)));
}

TEST_CASE("after the restart: the new agent adopts the update, finds it unhealthy at the deadline, and reports the rollback") {
  FakeAgent a;
  a.daemons[1].set_state(v1::DaemonHealth::UNREACHABLE);  // the new netd does not come up
  UpdateState s;
  s.commandId = "i7";
  s.sha256 = std::string(64, 'b');
  s.fromVersion = "1.0";
  s.toVersion = "1.1";
  s.phase = Phase::awaitingHealth;
  s.restartedAtMs = nowMs() - 5000;
  s.deadlineAtMs = nowMs() - 1;  // already due
  s.baseline = {{"vmm", "HEALTHY"}, {"netd", "HEALTHY"}};
  REQUIRE(makeDirs(a.cfg().dir));
  REQUIRE(writeState(stateFile(a.cfg().dir), s.encode()));

  UpdateService svc(a.io, a.cfg(), a.host(), plenty());
  svc.tickInterval = 10ms;
  svc.start();
  CHECK(a.adopted == std::vector<std::string>{"i7"});
  a.runFor(100ms);
  auto v = readVerdict(verdictFile(a.cfg().dir));
  REQUIRE(v);
  REQUIRE(*v);
  CHECK_FALSE((*v)->healthy);
  CHECK((*v)->reason == "netd UNREACHABLE (was HEALTHY before the update)");

  // The updater reinstalled 1.0; the agent that runs now reports.
  s.phase = Phase::rolledBack;
  s.reason = "health check failed: " + (*v)->reason;
  REQUIRE(writeState(stateFile(a.cfg().dir), s.encode()));
  a.runFor(100ms);
  REQUIRE(a.adoptedReplies.size() == 1);
  const auto& [id, r] = a.adoptedReplies[0];
  CHECK(id == "i7");
  CHECK(r.kind() == Reply::FAILED);
  CHECK(r.update().phase() == "rolled-back");
  CHECK(r.message().find("rolled back to outrider 1.0: health check failed: netd UNREACHABLE") == 0);
  CHECK(a.hooksRun == std::vector<std::string>{"rollback 1.0->1.1"});
}

TEST_CASE("install refuses a package for another name, the installed version, or a node without the package") {
  FakeAgent a;
  auto host = a.host();
  std::string name = "something-else", installed = "1.0";
  host.inspect = [&](const fs::path&) -> Result<PackageInfo> { return PackageInfo{name, "1.1", "amd64"}; };
  host.installedVersion = [&](const std::string&) -> Result<std::string> { return installed; };
  UpdateService svc(a.io, a.cfg(), host, plenty());
  auto d = a.receive(svc);
  auto attempt = [&] {
    std::optional<Reply> r;
    svc.run("i", install(d), [&](Reply x) { r = x; });
    REQUIRE(r);
    CHECK(r->kind() == Reply::FAILED);
    return r->message();
  };
  CHECK(attempt().find("this node updates only 'outrider'") != std::string::npos);
  name = "outrider";
  installed = "1.1";
  CHECK(attempt() == "outrider 1.1 is already installed");
  installed = "";
  CHECK(attempt().find("is not installed as a package") != std::string::npos);
  CHECK_FALSE(fs::exists(requestFile(a.cfg().dir)));
  CHECK(a.hooksRun.empty());
}

TEST_CASE("update commands with bad fields are refused before anything runs") {
  auto body = [](auto fill) {
    v1::CommandBody b;
    fill(*b.mutable_update());
    return checkCommand(b);
  };
  const std::string digest(32, '\x01');
  auto no_op = body([&](v1::UpdateCommand& u) { u.set_sha256(digest); });
  REQUIRE_FALSE(no_op);
  CHECK(no_op.error().message == "update command without a known operation");
  auto short_digest = body([](v1::UpdateCommand& u) {
    u.set_op(v1::UpdateCommand::OFFER);
    u.set_sha256("abc");
    u.set_size(10);
  });
  REQUIRE_FALSE(short_digest);
  CHECK(short_digest.error().message == "update: sha256 must be 32 bytes");
  auto no_size = body([&](v1::UpdateCommand& u) {
    u.set_op(v1::UpdateCommand::OFFER);
    u.set_sha256(digest);
  });
  REQUIRE_FALSE(no_size);
  CHECK(no_size.error().message == "update offer without a size");
  auto empty_chunk = body([&](v1::UpdateCommand& u) {
    u.set_op(v1::UpdateCommand::CHUNK);
    u.set_sha256(digest);
    u.set_offset(0);
  });
  REQUIRE_FALSE(empty_chunk);
  CHECK(empty_chunk.error().message == "update chunk without data");
  auto long_deadline = body([&](v1::UpdateCommand& u) {
    u.set_op(v1::UpdateCommand::INSTALL);
    u.set_sha256(digest);
    u.set_health_deadline_s(3601);
  });
  REQUIRE_FALSE(long_deadline);
  CHECK(long_deadline.error().message == "update: health_deadline_s is at most 3600");
  // Well-formed ones pass; STATUS needs no digest.
  CHECK(body([](v1::UpdateCommand& u) { u.set_op(v1::UpdateCommand::STATUS); }));
  CHECK(body([&](v1::UpdateCommand& u) {
    u.set_op(v1::UpdateCommand::INSTALL);
    u.set_sha256(digest);
    u.set_health_deadline_s(3600);
  }));
}

// ---------------------------------------------------------------- the updater's own check of a request

namespace {

struct SignedInstall {
  crypto::SigningKey op = *crypto::SigningKey::generate();
  std::map<std::string, crypto::VerifyKey> trusted{{op.publicKey().id(), op.publicKey()}};
  std::string sha = std::string(32, '\x5a');
  std::int64_t now = nowMs();

  v1::CommandBody body(const std::string& node = "edge-1") const {
    v1::CommandBody b;
    b.set_node_id(node);
    b.set_command_id("ctl-install-1");
    b.set_issued_at_ms(now);
    b.set_expires_at_ms(now + 720'000);
    b.mutable_update()->set_op(v1::UpdateCommand::INSTALL);
    b.mutable_update()->set_sha256(sha);
    return b;
  }
  static std::string sign(const v1::CommandBody& b, const crypto::SigningKey& key) {
    v1::CommandEnvelope env;
    std::string bytes = b.SerializeAsString();
    auto sig = key.sign(bytes);
    env.set_signature(std::string(sig.begin(), sig.end()));
    env.set_key_id(key.publicKey().id());
    env.set_body(bytes);
    return env.SerializeAsString();
  }
  UpdateState request(std::string signedCommand) const {
    UpdateState s;
    s.commandId = "ctl-install-1";
    s.sha256 = crypto::hex(std::string_view(sha));
    s.signedCommand = std::move(signedCommand);
    return s;
  }
  Status check(const UpdateState& r) const { return authorizeRequest(r, "edge-1", trusted, now, 300'000, 86'400'000); }
};

}  // namespace

TEST_CASE("the root updater carries out only an install the operator signed, for this node and this package") {
  SignedInstall s;
  CHECK(s.check(s.request(SignedInstall::sign(s.body(), s.op))));
  // It travels in the request file and comes back intact.
  auto back = UpdateState::decode(s.request(SignedInstall::sign(s.body(), s.op)).encode());
  REQUIRE(back);
  CHECK(s.check(*back));

  auto refused = [&](const UpdateState& r, std::string_view why) {
    auto st = s.check(r);
    REQUIRE_FALSE(st);
    CHECK_MESSAGE(st.error().message.find(why) != std::string::npos, st.error().message);
  };
  refused(s.request(""), "carries no operator-signed install command");
  refused(s.request(SignedInstall::sign(s.body(), *crypto::SigningKey::generate())), "does not check");
  refused(s.request(SignedInstall::sign(s.body("edge-2"), s.op)), "does not check");
  auto other = s.request(SignedInstall::sign(s.body(), s.op));
  other.sha256 = std::string(64, 'b');
  refused(other, "installs another package");
  auto renamed = s.request(SignedInstall::sign(s.body(), s.op));
  renamed.commandId = "ctl-install-2";
  refused(renamed, "the request names ctl-install-2");
  auto offer = s.body();
  offer.mutable_update()->set_op(v1::UpdateCommand::OFFER);
  refused(s.request(SignedInstall::sign(offer, s.op)), "not an update install");
  auto old = s.body();
  old.set_issued_at_ms(s.now - 3'600'000);
  old.set_expires_at_ms(s.now - 1'800'000);
  refused(s.request(SignedInstall::sign(old, s.op)), "does not check");
  auto tampered = SignedInstall::sign(s.body(), s.op);
  tampered[tampered.size() / 2] ^= 0x01;
  refused(s.request(tampered), "does not check");
  CHECK_FALSE(authorizeRequest(s.request(SignedInstall::sign(s.body(), s.op)), "edge-1", {}, s.now, 300'000, 86'400'000));
}
