// The hook runner against real executables (small shell scripts) in a temporary hooks directory.
#include <doctest/doctest.h>

#include <cstdlib>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "outrider/common/atomic_file.hpp"
#include "outrider/hooks/runner.hpp"
#include "support/process.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using outrider::hooks::HookRunner;
using outrider::hooks::RunnerOptions;
using outrider::test::TempDir;

namespace {

void writeHook(const fs::path& dir, const std::string& name, const std::string& body, unsigned mode = 0755) {
  fs::create_directories(dir);
  std::ofstream(dir / name) << "#!/bin/sh\n" << body << "\n";
  fs::permissions(dir / name, static_cast<fs::perms>(mode));
}

std::string slurp(const fs::path& p) {
  auto r = outrider::readFile(p);
  return r ? *r : std::string();
}

RunnerOptions options(const TempDir& t) {
  RunnerOptions o;
  o.hooksDir = t / "hooks";
  o.node = "node-7";
  o.timeout = 10s;
  o.killGrace = 1s;
  return o;
}

// Gone, or a zombie waiting for init to reap it: either way it no longer runs.
bool processEnded(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

}  // namespace

TEST_CASE("hooks run in byte order of their names; results carry name, exit code, duration and output") {
  TempDir t("hooks");
  auto d = t / "hooks" / "post-update.d";
  auto log = t / "order.log";
  for (std::string n : {"20-c", "02-a", "10-b", "10-B", "10_b"})
    writeHook(d, n, "echo " + n + " >> \"$OUTRIDER_TEST_LOG\"\necho out-" + n + "\necho err-" + n + " >&2");
  HookRunner runner(options(t));
  auto r = runner.run("post-update", {{"OUTRIDER_TEST_LOG", log.string()}});
  REQUIRE(r.ok());
  CHECK(r->ok());
  CHECK(slurp(log) == "02-a\n10-B\n10-b\n10_b\n20-c\n");
  REQUIRE(r->hooks.size() == 5);
  CHECK(r->hooks[0].name == "02-a");
  CHECK(r->hooks[4].name == "20-c");
  for (const auto& h : r->hooks) {
    CHECK(h.exitCode == 0);
    CHECK(h.signal == 0);
    CHECK_FALSE(h.timedOut);
    CHECK(h.duration < 5s);
    CHECK(h.output == "out-" + h.name + "\nerr-" + h.name + "\n");  // stdout and stderr together
    CHECK(h.status() == "exit 0");
  }
  CHECK(r->summary() == "post-update: 5 ran, ok");
}

TEST_CASE("run-parts rules: non-executables, directories and other names are skipped, with the reason") {
  TempDir t("hooks");
  auto d = t / "hooks" / "boot-ok.d";
  auto log = t / "ran.log";
  const std::string body = "echo \"$OUTRIDER_HOOK\" >> \"$OUTRIDER_TEST_LOG\"";
  writeHook(d, "10-run", body);
  writeHook(d, "20-noexec", body, 0644);
  writeHook(d, "30-script.sh", body);
  writeHook(d, "40-old~", body);
  writeHook(d, ".hidden", body);
  writeHook(d, "50-x.dpkg-old", body);
  fs::create_directories(d / "60-dir");
  fs::create_symlink(d / "10-run", d / "70-link");     // symlinks are followed, as run-parts does
  fs::create_symlink(d / "absent", d / "80-dangling");
  ::mkfifo((d / "90-fifo").c_str(), 0755);

  HookRunner runner(options(t));
  auto r = runner.run("boot-ok", {{"OUTRIDER_TEST_LOG", log.string()}});
  REQUIRE(r.ok());
  CHECK(slurp(log) == "10-run\n70-link\n");
  REQUIRE(r->hooks.size() == 2);
  std::map<std::string, std::string> skipped;
  for (const auto& s : r->skipped) skipped[s.name] = s.reason;
  CHECK(skipped.size() == 8);
  CHECK(skipped["20-noexec"] == "not executable");
  CHECK(skipped["30-script.sh"] == "name does not match [A-Za-z0-9_-]+");
  CHECK(skipped["40-old~"] == "name does not match [A-Za-z0-9_-]+");
  CHECK(skipped[".hidden"] == "name does not match [A-Za-z0-9_-]+");
  CHECK(skipped["50-x.dpkg-old"] == "name does not match [A-Za-z0-9_-]+");
  CHECK(skipped["60-dir"] == "a directory");
  CHECK(skipped["80-dangling"] == "dangling symlink or removed");
  CHECK(skipped["90-fifo"] == "a FIFO");
  CHECK(r->summary() == "boot-ok: 2 ran, 8 skipped, ok");
}

TEST_CASE("a missing event directory runs nothing; unknown events and bad variables are refused") {
  TempDir t("hooks");
  HookRunner runner(options(t));
  auto none = runner.run("rollback");
  REQUIRE(none.ok());
  CHECK(none->hooks.empty());
  CHECK(none->ok());

  for (std::string bad : {"pre-install", "", "../pre-update", "pre-update.d", "PRE-UPDATE", "boot-ok\n"}) {
    auto r = runner.run(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("unknown hook event") != std::string::npos);
    CHECK(r.error().message.find("provisioned, pre-update, post-update, boot-ok, rollback, pre-reboot, factory-reset") !=
          std::string::npos);
  }
  CHECK_FALSE(runner.run("boot-ok", {{"PATH", "/tmp"}}).ok());
  CHECK_FALSE(runner.run("boot-ok", {{"OUTRIDER_", "x"}}).ok());
  CHECK_FALSE(runner.run("boot-ok", {{"OUTRIDER_lower", "x"}}).ok());
  CHECK_FALSE(runner.run("boot-ok", {{"OUTRIDER_EVENT", "pre-update"}}).ok());
  CHECK_FALSE(runner.run("boot-ok", {{"OUTRIDER_X", "two\nlines"}}).ok());
  CHECK_FALSE(runner.run("boot-ok", {{"OUTRIDER_X", std::string("nul\0", 4)}}).ok());
  CHECK_FALSE(runner.run("boot-ok", {{"OUTRIDER_X", std::string(5000, 'x')}}).ok());
  CHECK(runner.run("boot-ok", {{"OUTRIDER_X", std::string(4096, 'x')}}).ok());

  fs::create_directories(t / "hooks");
  std::ofstream(t / "hooks" / "factory-reset.d") << "not a directory";
  auto notDir = runner.run("factory-reset");
  REQUIRE_FALSE(notDir.ok());
  CHECK(notDir.error().message.find("not a directory") != std::string::npos);
}

TEST_CASE("the environment describes the event and nothing else is inherited; stdin is /dev/null") {
  TempDir t("hooks");
  ::setenv("OUTRIDER_LEAK_CHECK", "leaked", 1);
  ::setenv("HOME", "/root-leak", 1);
  writeHook(t / "hooks" / "pre-update.d", "10-env",
            "/usr/bin/env | sort\n"
            "echo \"stdin=$(readlink /proc/self/fd/0)\"\n"
            "echo \"cwd=$(pwd)\"");
  HookRunner runner(options(t));
  auto r = runner.run("pre-update", {{"OUTRIDER_VERSION_FROM", "0.1.0"},
                                     {"OUTRIDER_VERSION_TO", "0.2.0"},
                                     {"OUTRIDER_SLOT", "b"},
                                     {"OUTRIDER_REASON", "operator asked, twice"}});
  ::unsetenv("OUTRIDER_LEAK_CHECK");
  REQUIRE(r.ok());
  REQUIRE(r->hooks.size() == 1);
  const std::string& out = r->hooks[0].output;
  std::string expectedEnv =
      "OUTRIDER_EVENT=pre-update\n"
      "OUTRIDER_HOOK=10-env\n"
      "OUTRIDER_NODE=node-7\n"
      "OUTRIDER_REASON=operator asked, twice\n"
      "OUTRIDER_SLOT=b\n"
      "OUTRIDER_VERSION_FROM=0.1.0\n"
      "OUTRIDER_VERSION_TO=0.2.0\n"
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n";
  // sh itself may add PWD (and nothing else from us); everything listed must be exactly ours.
  std::string envPart = out.substr(0, out.find("stdin="));
  std::string withoutPwd;
  std::istringstream lines(envPart);
  for (std::string l; std::getline(lines, l);)
    if (l.rfind("PWD=", 0) != 0 && l.rfind("SHLVL=", 0) != 0 && l.rfind("_=", 0) != 0) withoutPwd += l + "\n";
  CHECK(withoutPwd == expectedEnv);
  CHECK(out.find("leaked") == std::string::npos);
  CHECK(out.find("root-leak") == std::string::npos);
  CHECK(out.find("stdin=/dev/null\n") != std::string::npos);
  CHECK(out.find("cwd=/\n") != std::string::npos);
}

TEST_CASE("a hook over its timeout is ended with its whole process group, SIGKILL after the grace") {
  TempDir t("hooks");
  auto pids = t / "pids";
  // Ignores SIGTERM (and so do its children, which inherit the ignored disposition), so only the
  // SIGKILL after the grace ends them; the background child must go too.
  writeHook(t / "hooks" / "rollback.d", "10-hang",
            "trap '' TERM\n"
            "sleep 300 &\n"
            "echo $! > \"$OUTRIDER_TEST_PIDS\"\n"
            "echo started\n"
            "sleep 300");
  writeHook(t / "hooks" / "rollback.d", "20-after", "echo after");
  auto opts = options(t);
  opts.timeout = 700ms;
  opts.killGrace = 300ms;
  HookRunner runner(opts);
  auto started = std::chrono::steady_clock::now();
  auto r = runner.run("rollback", {{"OUTRIDER_TEST_PIDS", pids.string()}});
  auto took = std::chrono::steady_clock::now() - started;
  REQUIRE(r.ok());
  REQUIRE(r->hooks.size() == 2);  // rollback is not a pre-* event: the next hook still runs
  const auto& h = r->hooks[0];
  CHECK(h.timedOut);
  CHECK(h.signal == SIGKILL);
  CHECK(h.status() == "timed out after 700 ms");
  CHECK(h.output == "started\n");
  CHECK(h.duration >= 700ms);
  CHECK(took < 5s);
  CHECK(r->hooks[1].ok());
  CHECK_FALSE(r->ok());
  CHECK(r->summary() == "rollback: 2 ran, 1 failed (10-hang: timed out after 700 ms)");

  pid_t child = std::stoi(slurp(pids));
  CHECK(outrider::test::waitFor([&] { return processEnded(child); }, 5s));
}

TEST_CASE("a hook that ends on SIGTERM is not SIGKILLed; stragglers it leaves are ended when it exits") {
  TempDir t("hooks");
  auto pids = t / "pids";
  writeHook(t / "hooks" / "pre-reboot.d", "10-slow", "sleep 300");
  writeHook(t / "hooks" / "post-update.d", "10-leaves",
            "sleep 300 > /dev/null 2>&1 &\n"
            "echo $! > \"$OUTRIDER_TEST_PIDS\"");
  auto opts = options(t);
  opts.timeout = 300ms;
  opts.killGrace = 5s;
  HookRunner runner(opts);
  auto r = runner.run("pre-reboot");
  REQUIRE(r.ok());
  REQUIRE(r->hooks.size() == 1);
  CHECK(r->hooks[0].timedOut);
  CHECK(r->hooks[0].signal == SIGTERM);
  CHECK(r->hooks[0].duration < 4s);
  CHECK(r->aborted);
  CHECK(r->abortReason == "aborted by 10-slow: timed out after 300 ms");

  auto left = runner.run("post-update", {{"OUTRIDER_TEST_PIDS", pids.string()}});
  REQUIRE(left.ok());
  CHECK(left->ok());
  pid_t child = std::stoi(slurp(pids));
  CHECK(outrider::test::waitFor([&] { return processEnded(child); }, 5s));
}

TEST_CASE("output is capped per hook and the truncation noted") {
  TempDir t("hooks");
  // 200 KiB on stdout: the hook must not block on a full pipe, and only the cap is kept.
  writeHook(t / "hooks" / "provisioned.d", "10-chatty", "head -c 204800 /dev/zero | tr '\\0' x\necho done >&2\nexit 4");
  auto opts = options(t);
  opts.outputCap = 64 * 1024;
  HookRunner runner(opts);
  auto r = runner.run("provisioned");
  REQUIRE(r.ok());
  REQUIRE(r->hooks.size() == 1);
  const auto& h = r->hooks[0];
  CHECK(h.exitCode == 4);
  CHECK(h.truncated);
  CHECK(h.output.substr(0, 64 * 1024) == std::string(64 * 1024, 'x'));
  CHECK(h.output.find("[output truncated at 65536 bytes]") != std::string::npos);
  CHECK(h.output.size() < 64 * 1024 + 100);
}

TEST_CASE("pre-* events stop at the first failing hook; other events run all and report failures") {
  TempDir t("hooks");
  auto log = t / "ran.log";
  for (std::string ev : {"pre-update", "post-update"}) {
    auto d = t / "hooks" / (ev + ".d");
    writeHook(d, "10-ok", "echo 10-ok >> \"$OUTRIDER_TEST_LOG\"");
    writeHook(d, "20-fail", "echo 20-fail >> \"$OUTRIDER_TEST_LOG\"\necho 'disk too full' >&2\nexit 3");
    writeHook(d, "30-after", "echo 30-after >> \"$OUTRIDER_TEST_LOG\"");
    writeHook(d, "40-killed", "kill -USR1 $$");
  }
  HookRunner runner(options(t));

  auto pre = runner.run("pre-update", {{"OUTRIDER_TEST_LOG", log.string()}});
  REQUIRE(pre.ok());
  CHECK(slurp(log) == "10-ok\n20-fail\n");
  CHECK(pre->aborted);
  CHECK(pre->abortReason == "aborted by 20-fail: exit 3");
  CHECK(pre->summary() == "pre-update: 2 ran, aborted by 20-fail: exit 3");
  REQUIRE(pre->hooks.size() == 2);
  CHECK(pre->hooks[1].output == "disk too full\n");
  CHECK_FALSE(pre->ok());

  fs::remove(log);
  auto post = runner.run("post-update", {{"OUTRIDER_TEST_LOG", log.string()}});
  REQUIRE(post.ok());
  CHECK(slurp(log) == "10-ok\n20-fail\n30-after\n");
  CHECK_FALSE(post->aborted);
  CHECK_FALSE(post->ok());
  REQUIRE(post->hooks.size() == 4);
  CHECK(post->hooks[3].signal == SIGUSR1);
  CHECK(post->hooks[3].status().rfind("killed by signal 10", 0) == 0);
  CHECK(post->summary().rfind("post-update: 4 ran, 2 failed (20-fail: exit 3; 40-killed: killed by signal 10", 0) == 0);
}

TEST_CASE("a hook that cannot be executed is a failure with the reason") {
  TempDir t("hooks");
  auto d = t / "hooks" / "pre-update.d";
  fs::create_directories(d);
  std::ofstream(d / "10-noshebang") << "echo hi\n";  // executable, but no interpreter line
  fs::permissions(d / "10-noshebang", static_cast<fs::perms>(0755));
  HookRunner runner(options(t));
  auto r = runner.run("pre-update");
  REQUIRE(r.ok());
  REQUIRE(r->hooks.size() == 1);
  CHECK_FALSE(r->hooks[0].ok());
  CHECK(r->aborted);
  if (std::getenv("OUTRIDER_TEST_EMULATED")) {
    // Under qemu-user, posix_spawn cannot report the child's exec error to the parent (qemu runs the
    // vfork-style clone as a fork), so the hook shows up as exit 127 instead of "cannot run".
    MESSAGE("emulated: " << r->abortReason);
    return;
  }
  CHECK_FALSE(r->hooks[0].error.empty());
  CHECK(r->abortReason.rfind("aborted by 10-noshebang: cannot run: ", 0) == 0);
}

TEST_CASE("runAsync runs on the worker thread and delivers the result on the io_context") {
  TempDir t("hooks");
  writeHook(t / "hooks" / "boot-ok.d", "10-a", "echo a");
  HookRunner runner(options(t));
  boost::asio::io_context io;
  std::optional<outrider::Result<outrider::hooks::RunResult>> got;
  std::thread::id ranOn;
  runner.runAsync("boot-ok", {}, io.get_executor(), [&](outrider::Result<outrider::hooks::RunResult> r) {
    ranOn = std::this_thread::get_id();
    got.emplace(std::move(r));
  });
  runner.runAsync("no-such-event", {}, io.get_executor(), [&](outrider::Result<outrider::hooks::RunResult> r) {
    CHECK_FALSE(r.ok());
  });
  io.run();  // returns only once both results were delivered (the work guard keeps it running)
  REQUIRE(got.has_value());
  REQUIRE(got->ok());
  CHECK((*got)->hooks.size() == 1);
  CHECK((*got)->hooks[0].output == "a\n");
  CHECK(ranOn == std::this_thread::get_id());
}

TEST_CASE("stop() ends a running hook at once and runs no more") {
  TempDir t("hooks");
  writeHook(t / "hooks" / "factory-reset.d", "10-sleep", "sleep 300");
  writeHook(t / "hooks" / "factory-reset.d", "20-next", "echo next");
  auto opts = options(t);
  opts.timeout = 60s;
  auto runner = std::make_unique<HookRunner>(opts);
  boost::asio::io_context io;
  std::optional<outrider::Result<outrider::hooks::RunResult>> got;
  runner->runAsync("factory-reset", {}, io.get_executor(),
                   [&](outrider::Result<outrider::hooks::RunResult> r) { got.emplace(std::move(r)); });
  std::thread io_thread([&] { io.run(); });
  auto started = std::chrono::steady_clock::now();
  // The hook is running once sleep is a child in its own process group; stop regardless of timing.
  runner->stop();
  io_thread.join();
  CHECK(std::chrono::steady_clock::now() - started < 10s);
  REQUIRE(got.has_value());
  REQUIRE(got->ok());
  const auto& r = **got;
  CHECK(r.hooks.size() + r.skipped.size() == 2);
  for (const auto& h : r.hooks) CHECK(h.cancelled);
  for (const auto& s : r.skipped) CHECK(s.reason == "runner stopped");
  runner.reset();
}
