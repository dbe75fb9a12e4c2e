#pragma once
// The hook runner: the executables in <hooks_dir>/<event>.d/ run in name order with run-parts rules,
// each with a timeout that ends its whole process group, stdin /dev/null, an environment that
// describes the event and nothing else, and its output (stdout and stderr together) captured up to a cap.
// A failing hook of a pre-* event stops the run: the caller aborts the action it was about to take.
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "outrider/common/result.hpp"

namespace outrider::hooks {

enum class Event { provisioned, preUpdate, postUpdate, bootOk, rollback, preReboot, factoryReset };

/// "provisioned", "pre-update", "post-update", "boot-ok", "rollback", "pre-reboot", "factory-reset".
std::string_view eventName(Event e);
/// The event of that name; any other name is an Error listing the valid ones.
Result<Event> parseEvent(std::string_view name);
/// pre-update and pre-reboot: the first failing hook stops the run and aborts the action.
bool isPreEvent(Event e);

using HookEnv = std::map<std::string, std::string>;

/// Caller-supplied variables: names OUTRIDER_[A-Z0-9_]+ other than the three the runner sets
/// (OUTRIDER_EVENT, OUTRIDER_NODE, OUTRIDER_HOOK), values up to 4096 bytes without NUL or newline.
Status validateHookEnv(const HookEnv& env);

struct RunnerOptions {
  std::filesystem::path hooksDir = "/etc/outrider/hooks";
  std::string node;                                  // OUTRIDER_NODE
  std::chrono::milliseconds timeout{60'000};         // per hook
  std::chrono::milliseconds killGrace{5'000};        // SIGTERM -> SIGKILL
  std::size_t outputCap = 64 * 1024;                 // per hook, stdout and stderr together
};

struct HookResult {
  std::string name;
  int exitCode = -1;          // when it exited
  int signal = 0;             // when a signal ended it (also after a timeout)
  bool timedOut = false;
  bool cancelled = false;     // the runner was stopped while it ran
  std::chrono::milliseconds duration{0};
  std::chrono::milliseconds timeout{0};  // the limit it ran under
  std::string output;
  bool truncated = false;     // output was cut at the cap
  std::string error;          // it could not be started (then exitCode is -1)

  bool ok() const { return error.empty() && !timedOut && !cancelled && signal == 0 && exitCode == 0; }
  /// "exit 0", "exit 3", "killed by signal 9 (Killed)", "timed out after 1000 ms", "cannot run: ...".
  std::string status() const;
};

struct SkippedHook {
  std::string name;
  std::string reason;  // "not executable", "a directory", "name does not match [A-Za-z0-9_-]+", ...
};

struct RunResult {
  Event event = Event::provisioned;
  std::vector<HookResult> hooks;     // in the order they ran
  std::vector<SkippedHook> skipped;  // entries of <event>.d that were not run, and why
  bool aborted = false;              // a pre-* hook failed; the rest did not run
  std::string abortReason;           // "aborted by 10-check: exit 3"

  /// Every hook that ran succeeded (and none was cut short).
  bool ok() const;
  /// One line: "pre-update: 2 ran, 1 skipped, ok" / "... 1 failed (20-x: exit 1)" / "... aborted by ...".
  std::string summary() const;
};

class HookRunner {
 public:
  explicit HookRunner(RunnerOptions opts);
  /// Stops a running hook (as on a timeout) and waits for the worker thread.
  ~HookRunner();
  HookRunner(const HookRunner&) = delete;
  HookRunner& operator=(const HookRunner&) = delete;

  const RunnerOptions& options() const { return opts_; }

  /// Run the hooks of `event` and wait for them. Errors: an unknown event, bad caller variables, an
  /// event directory that exists but cannot be read. A missing event directory runs nothing.
  Result<RunResult> run(std::string_view event, const HookEnv& env = {});

  /// run() on the runner's worker thread (runs queue one after the other); `done(Result<RunResult>)` is
  /// posted to `ex`, which is kept from running out of work meanwhile.
  template <class Executor, class Handler>
  void runAsync(std::string event, HookEnv env, Executor ex, Handler done) {
    auto work = boost::asio::make_work_guard(ex);
    boost::asio::post(pool_, [this, event = std::move(event), env = std::move(env), work = std::move(work),
                              done = std::move(done)]() mutable {
      Result<RunResult> r = run(event, env);
      auto ex2 = work.get_executor();
      boost::asio::post(ex2, [r = std::move(r), done = std::move(done), work = std::move(work)]() mutable {
        done(std::move(r));
      });
    });
  }

  /// End the running hook now and every later one at once (used at shutdown). Irreversible.
  void stop();

 private:
  bool stopRequested() const;

  RunnerOptions opts_;
  int stopFd_ = -1;  // eventfd, readable once stop() was called
  boost::asio::thread_pool pool_{1};
};

}  // namespace outrider::hooks
