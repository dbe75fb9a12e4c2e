#include "outrider/hooks/spawn.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <sstream>

#include "outrider/common/unique_fd.hpp"

namespace outrider::hooks::detail {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

Status makePipe(UniqueFd& r, UniqueFd& w) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return errnoError("pipe", errno);
  r = UniqueFd(p[0]);
  w = UniqueFd(p[1]);
  return {};
}

// posix_spawn's attribute and file-action objects, destroyed on every path.
struct SpawnAttr {
  posix_spawnattr_t a;
  SpawnAttr() { posix_spawnattr_init(&a); }
  ~SpawnAttr() { posix_spawnattr_destroy(&a); }
};
struct FileActions {
  posix_spawn_file_actions_t f;
  FileActions() { posix_spawn_file_actions_init(&f); }
  ~FileActions() { posix_spawn_file_actions_destroy(&f); }
};

int msLeft(Clock::time_point until) {
  auto left = std::chrono::duration_cast<milliseconds>(until - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 60'000 ? 60'000 : static_cast<int>(left);
}

// Read what is available; false at end of file or on a hard error.
bool drain(int fd, std::string& into, std::size_t cap, bool& truncated) {
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      std::size_t room = into.size() < cap ? cap - into.size() : 0;
      std::size_t take = static_cast<std::size_t>(n) < room ? static_cast<std::size_t>(n) : room;
      into.append(buf, take);
      if (take < static_cast<std::size_t>(n)) truncated = true;
      continue;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK;
  }
}

}  // namespace

Result<std::filesystem::path> findProgram(const std::string& name) {
  if (name.empty()) return Error{"empty program name"};
  if (name.find('/') != std::string::npos) return std::filesystem::path(name);
  std::string path = kMinimalPath;
  std::istringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::filesystem::path p = std::filesystem::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return Error{name + ": not found in " + path};
}

std::string firstLine(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    auto e = line.find_last_not_of(" \t\r");
    line = line.substr(b, e - b + 1);
    if (line.size() > 200) line = line.substr(0, 200) + "...";
    return line;
  }
  return {};
}

std::string describe(const SpawnResult& r, milliseconds timeout) {
  if (r.cancelled) return "cancelled";
  if (r.timedOut) return "timed out after " + std::to_string(timeout.count()) + " ms";
  if (r.signal != 0) {
    const char* s = ::strsignal(r.signal);
    return "killed by signal " + std::to_string(r.signal) + (s ? std::string(" (") + s + ")" : std::string());
  }
  return "exit " + std::to_string(r.exitCode);
}

Result<SpawnResult> spawnAndWait(const SpawnOptions& opts) {
  const std::string what = "run " + opts.program.string();
  if (opts.input && opts.input->size() > 60 * 1024) return Error{what + ": input too large"};

  UniqueFd outR, outW, errR, errW, inR, inW;
  if (auto s = makePipe(outR, outW); !s) return Error{what + ": " + s.error().message, s.error().code};
  if (!opts.mergeStderr)
    if (auto s = makePipe(errR, errW); !s) return Error{what + ": " + s.error().message, s.error().code};
  if (opts.input) {
    if (auto s = makePipe(inR, inW); !s) return Error{what + ": " + s.error().message, s.error().code};
    // Written before the child starts, while our read end is still open (so no SIGPIPE), and it fits
    // in the pipe buffer (checked above), so this never waits on a child that does not read.
    const std::string& in = *opts.input;
    std::size_t off = 0;
    while (off < in.size()) {
      ssize_t n = ::write(inW.get(), in.data() + off, in.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errnoError(what + ": write input", errno);
      off += static_cast<std::size_t>(n);
    }
    inW.reset();
  }

  FileActions fa;
  if (opts.input)
    posix_spawn_file_actions_adddup2(&fa.f, inR.get(), 0);
  else
    posix_spawn_file_actions_addopen(&fa.f, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa.f, outW.get(), 1);
  posix_spawn_file_actions_adddup2(&fa.f, opts.mergeStderr ? outW.get() : errW.get(), 2);
  posix_spawn_file_actions_addclosefrom_np(&fa.f, 3);
  posix_spawn_file_actions_addchdir_np(&fa.f, "/");

  SpawnAttr attr;
  sigset_t none, dflt;
  sigemptyset(&none);
  sigfillset(&dflt);
  sigdelset(&dflt, SIGKILL);
  sigdelset(&dflt, SIGSTOP);
  posix_spawnattr_setsigmask(&attr.a, &none);
  posix_spawnattr_setsigdefault(&attr.a, &dflt);
  // Its own process group (pgid = its pid), so a timeout ends everything it started.
  posix_spawnattr_setpgroup(&attr.a, 0);
  posix_spawnattr_setflags(&attr.a, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  std::vector<std::string> argvStore;
  argvStore.reserve(opts.args.size() + 1);
  argvStore.push_back(opts.program.string());
  for (const auto& a : opts.args) argvStore.push_back(a);
  std::vector<char*> argv;
  for (auto& a : argvStore) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> envStore(opts.env);
  std::vector<char*> envp;
  for (auto& e : envStore) envp.push_back(e.data());
  envp.push_back(nullptr);

  auto started = Clock::now();
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, opts.program.c_str(), &fa.f, &attr.a, argv.data(), envp.data());
  if (rc != 0) return errnoError(what, rc);
  outW.reset();
  errW.reset();
  inR.reset();

  // Through syscall(): glibc 2.36's <sys/pidfd.h> lacks C linkage for C++.
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) {
    // Cannot watch it; end it rather than leave it unsupervised.
    int e = errno;
    ::kill(-pid, SIGKILL);
    int st;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return errnoError(what + ": pidfd_open", e);
  }

  ::fcntl(outR.get(), F_SETFL, O_NONBLOCK);
  if (errR) ::fcntl(errR.get(), F_SETFL, O_NONBLOCK);

  SpawnResult res;
  enum class Phase { running, terminating, killed } phase = Phase::running;
  auto deadline = started + opts.timeout;
  auto killAt = deadline;
  auto drainUntil = deadline;
  bool exited = false;
  int status = 0;

  auto endGroup = [&](bool cancelled) {
    if (cancelled)
      res.cancelled = true;
    else
      res.timedOut = true;
    ::kill(-pid, SIGTERM);
    phase = Phase::terminating;
    killAt = Clock::now() + opts.killGrace;
  };

  while (!exited || outR || errR) {
    pollfd pf[4];
    int n = 0;
    int iOut = -1, iErr = -1, iPid = -1, iCancel = -1;
    if (outR) { iOut = n; pf[n++] = {outR.get(), POLLIN, 0}; }
    if (errR) { iErr = n; pf[n++] = {errR.get(), POLLIN, 0}; }
    if (!exited) { iPid = n; pf[n++] = {pidfd.get(), POLLIN, 0}; }
    if (!exited && phase == Phase::running && opts.cancelFd >= 0) { iCancel = n; pf[n++] = {opts.cancelFd, POLLIN, 0}; }

    int wait = -1;
    if (!exited && phase == Phase::running) wait = msLeft(deadline);
    else if (!exited && phase == Phase::terminating) wait = msLeft(killAt);
    else if (exited) wait = msLeft(drainUntil);

    int r = ::poll(pf, static_cast<nfds_t>(n), wait);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      // Should not happen; do not leave the group running.
      ::kill(-pid, SIGKILL);
      phase = Phase::killed;
      r = 0;
    }
    if (r == 0) {
      if (!exited && phase == Phase::running && Clock::now() >= deadline) {
        endGroup(false);
      } else if (!exited && phase == Phase::terminating && Clock::now() >= killAt) {
        ::kill(-pid, SIGKILL);
        phase = Phase::killed;
      } else if (exited && Clock::now() >= drainUntil) {
        // Something that left the process group still holds the output open; stop reading.
        res.outputHeld = true;
        outR.reset();
        errR.reset();
      }
      continue;
    }
    if (iOut >= 0 && (pf[iOut].revents & (POLLIN | POLLHUP | POLLERR)))
      if (!drain(outR.get(), res.output, opts.outputCap, res.truncated)) outR.reset();
    if (iErr >= 0 && (pf[iErr].revents & (POLLIN | POLLHUP | POLLERR)))
      if (!drain(errR.get(), res.errors, opts.outputCap, res.truncated)) errR.reset();
    if (iCancel >= 0 && (pf[iCancel].revents & POLLIN)) endGroup(true);
    if (iPid >= 0 && (pf[iPid].revents & POLLIN)) {
      // It has exited but is not reaped, so its pid (the group id) cannot be reused yet: end whatever
      // it left behind in its group, then reap it.
      ::kill(-pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      exited = true;
      res.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
      drainUntil = Clock::now() + std::chrono::seconds(2);
    }
  }

  if (WIFEXITED(status)) res.exitCode = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) res.signal = WTERMSIG(status);
  return res;
}

}  // namespace outrider::hooks::detail
