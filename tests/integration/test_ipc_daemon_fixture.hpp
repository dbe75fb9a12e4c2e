#pragma once
// Runs a built local-API daemon (outrider-vmm, outrider-netd) with a config in a temp dir, and talks
// to it over its socket. Both the process and the directory go away with the fixture, also when a
// check fails.
#include <doctest/doctest.h>
#include <grp.h>
#include <sys/wait.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "outrider/common/ipc.hpp"
#include "outrider/common/version.hpp"
#include "support/process.hpp"
#include "support/sandbox_config.hpp"
#include "unit/test_ipc_support.hpp"

namespace outrider::test {

class DaemonFixture {
 public:
  /// `extraConfig` is appended after the [api] section that puts the socket in the temp dir.
  DaemonFixture(std::string exe, std::string extraConfig = "") : exe_(std::move(exe)) {
    socket_ = dir_ / "api.sock";
    config_ = dir_ / (exe_ + ".toml");
    std::string sandbox = exe_ == "outrider-vmm"    ? vmmSandboxConfig(dir_.path())
                          : exe_ == "outrider-netd" ? netdSandboxConfig(dir_.path())
                                                    : "";
    // The sandbox sections come last, so line numbers in `extraConfig` stay as the caller wrote them.
    std::ofstream(config_) << "[api]\nsocket = \"" << socket_.string() << "\"\n" << extraConfig << sandbox;
    proc_.emplace(std::vector<std::string>{binary(exe_).string(), "--config", config_.string()}, dir_ / "log");
  }

  Process& process() { return *proc_; }
  const std::filesystem::path& socket() const { return socket_; }
  const std::filesystem::path& config() const { return config_; }

  /// Wait for the socket to appear (or the process to die), then ask for health.
  Result<v1::LocalReply> health() {
    waitFor([&] { return std::filesystem::exists(socket_) || !proc_->running(); }, std::chrono::seconds(10));
    if (!std::filesystem::exists(socket_)) return Error{exe_ + " did not create its socket; log:\n" + proc_->log()};
    boost::asio::io_context io;
    ipc::Client client(io, socket_);
    return callAndWait(io, client);
  }

  /// Exit status if it exited within `timeout`, -1 otherwise (or if killed by a signal).
  int exitCode(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto st = proc_->wait(timeout);
    if (!st || !WIFEXITED(*st)) return -1;
    return WEXITSTATUS(*st);
  }

 private:
  std::string exe_;
  TempDir dir_{"daemon"};
  std::filesystem::path socket_, config_;
  std::optional<Process> proc_;  // declared after dir_, so it is stopped before the dir is removed
};

/// The checks both daemons share; `name` is the daemon's executable and reported name.
/// `detail` is the start of the health detail the daemon reports.
inline void checkHealthAndCleanStop(const std::string& name, const std::string& detail) {
  DaemonFixture d(name, "[log]\nlevel = \"debug\"\n");
  auto h = d.health();
  REQUIRE_MESSAGE(h.ok(), (h.ok() ? "" : h.error().message));
  REQUIRE(h->has_health());
  CHECK(h->health().daemon() == name);
  CHECK(h->health().version() == std::string(outrider::version()));
  CHECK(h->health().healthy());
  CHECK_MESSAGE(h->health().detail().rfind(detail, 0) == 0, h->health().detail());

  // Without the "outrider" group on this host the daemon must say so and carry on.
  if (!::getgrnam("outrider")) CHECK(d.process().log().find("group 'outrider'") != std::string::npos);
  if (!::getgrnam("outrider")) CHECK(d.process().log().find(", ignoring") != std::string::npos);

  d.process().signal(SIGTERM);
  CHECK(d.exitCode() == 0);
  CHECK_FALSE(std::filesystem::exists(d.socket()));
}

inline void checkTypoExits2(const std::string& name) {
  DaemonFixture d(name, "[log]\nlevel = \"info\"\nlevle = \"debug\"\n");
  CHECK(d.exitCode() == 2);
  auto log = d.process().log();
  INFO("log: " << log);
  // The [api] section takes lines 1-2, so the typo is on line 5.
  CHECK(log.find("<3>" + d.config().string() + ":5") != std::string::npos);
  CHECK(log.find("log.levle") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(d.socket()));
}

/// A second instance on a live socket must not steal it; a missing --config file exits 2 naming the file.
inline void checkSecondInstanceAndMissingConfig(const std::string& name) {
  DaemonFixture first(name);
  REQUIRE(first.health().ok());
  // Same config, same socket: the second must not steal the first one's socket.
  Process second({binary(name).string(), "--config", first.config().string()},
                 first.config().parent_path() / "second.log");
  auto st = second.wait(std::chrono::seconds(10));
  REQUIRE(st);
  CHECK(WIFEXITED(*st));
  CHECK(WEXITSTATUS(*st) != 0);
  CHECK(second.log().find("another server is listening") != std::string::npos);
  CHECK(first.health().ok());

  Process missing({binary(name).string(), "--config", (first.config().parent_path() / "nope.toml").string()},
                  first.config().parent_path() / "missing.log");
  auto ms = missing.wait(std::chrono::seconds(10));
  REQUIRE(ms);
  CHECK(WEXITSTATUS(*ms) == 2);
  CHECK(missing.log().find("nope.toml") != std::string::npos);
}

}  // namespace outrider::test
