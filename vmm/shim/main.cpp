// outrider-ctshim: the supervisor of one container. outrider-vmm starts it in a session of its own; it
// creates and starts the container with crun, pumps the container's stdout/stderr into size-capped log
// files, reaps the container's init (it is the init's subreaper once `crun create` has exited), and
// writes each step to bundle/status atomically. So the container keeps running, and its exit status
// is still recorded, when outrider-vmm restarts.
//
// outrider-ctshim --crun PATH --root DIR --bundle DIR --id NAME --log-max BYTES
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "outrider/common/atomic_file.hpp"
#include "outrider/vmm/ct_log.hpp"
#include "outrider/vmm/ct_status.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace outrider::vmm;

struct Args {
  std::string crun, root, bundle, id;
  std::uint64_t logMax = 1u << 20;
};

std::int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

ShimStatus status_;
Args args_;

/// The final record (the exit status) must survive power loss; "starting" and "running" need not (after a
/// power loss nothing runs, and the boot id tells vmm so), so they skip the fsyncs that would slow the start.
void save(bool durable = true) {
  fs::path path = fs::path(args_.bundle) / "status";
  std::string text = formatShimStatus(status_);
  if (durable) {
    auto st = outrider::writeFileAtomic(path, text, 0644);
    if (!st) std::fprintf(stderr, "outrider-ctshim %s: %s, ignoring\n", args_.id.c_str(), st.error().message.c_str());
    return;
  }
  fs::path tmp = path;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  if (fd >= 0) ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0)
    std::fprintf(stderr, "outrider-ctshim %s: write %s: %s, ignoring\n", args_.id.c_str(), path.c_str(),
                 std::strerror(errno));
}

/// Spawn crun with the given stdout/stderr; SIGCHLD stays blocked here and default in the child.
pid_t spawnCrun(std::vector<std::string> cmd, int out, int err) {
  std::vector<std::string> argv{args_.crun, "--root", args_.root, "--log", "file:" + args_.bundle + "/crun.log"};
  argv.insert(argv.end(), cmd.begin(), cmd.end());
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  posix_spawn_file_actions_adddup2(&fa, err, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, dflt;
  sigemptyset(&none);
  sigemptyset(&dflt);
  sigaddset(&dflt, SIGPIPE);
  sigaddset(&dflt, SIGCHLD);
  sigaddset(&dflt, SIGTERM);
  sigaddset(&dflt, SIGHUP);
  sigaddset(&dflt, SIGINT);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &dflt);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> av;
  for (auto& a : argv) av.push_back(a.data());
  av.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, args_.crun.c_str(), &fa, &attr, av.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

int waitExit(pid_t pid) {
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::string lastLine(const fs::path& p) {
  std::ifstream in(p);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

void fail(const std::string& why) {
  status_.state = "failed";
  status_.error = why;
  status_.finishedMs = nowMs();
  save();
  std::fprintf(stderr, "outrider-ctshim %s: %s\n", args_.id.c_str(), why.c_str());
}

bool parseArgs(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--crun") args_.crun = v;
    else if (k == "--root") args_.root = v;
    else if (k == "--bundle") args_.bundle = v;
    else if (k == "--id") args_.id = v;
    else if (k == "--log-max") args_.logMax = std::stoull(v);
    else return false;
  }
  return !args_.crun.empty() && !args_.root.empty() && !args_.bundle.empty() && !args_.id.empty();
}

/// Read what is available on `fd` into `log`; false at end of stream.
bool pump(int fd, CappedLog& log) {
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      (void)log.write(std::string_view(buf, static_cast<std::size_t>(n)));
      continue;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    return errno == EAGAIN;
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (!parseArgs(argc, argv)) {
      std::fprintf(stderr, "usage: outrider-ctshim --crun PATH --root DIR --bundle DIR --id NAME --log-max BYTES\n");
      return 2;
    }
  } catch (const std::exception&) {
    std::fprintf(stderr, "outrider-ctshim: bad --log-max\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGTERM, SIG_IGN);  // stopping goes through `crun kill`; the supervisor stays to record the exit
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  ::sigprocmask(SIG_BLOCK, &chld, nullptr);
  int sfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);

  status_.state = "starting";
  status_.shimPid = ::getpid();
  status_.bootId = currentBootId();
  status_.startedMs = nowMs();
  save(false);

  fs::path bundle = args_.bundle;
  std::error_code ec;
  fs::remove(bundle / "pid", ec);
  fs::remove(bundle / "crun.log", ec);
  int outp[2], errp[2];
  if (::pipe2(outp, O_CLOEXEC) != 0 || ::pipe2(errp, O_CLOEXEC) != 0) {
    fail(std::string("pipe: ") + std::strerror(errno));
    return 1;
  }
  CappedLog outLog(bundle / "stdout.log", args_.logMax), errLog(bundle / "stderr.log", args_.logMax);

  pid_t create = spawnCrun({"create", "--bundle", args_.bundle, "--pid-file", (bundle / "pid").string(), args_.id},
                           outp[1], errp[1]);
  if (create < 0) {
    fail("run " + args_.crun + ": " + std::strerror(errno));
    return 1;
  }
  ::close(outp[1]);
  ::close(errp[1]);
  int rc = waitExit(create);
  if (rc != 0) {
    fail("crun create exited " + std::to_string(rc) + ": " + lastLine(bundle / "crun.log"));
    return 1;
  }
  int pid = 0;
  {
    std::ifstream in(bundle / "pid");
    in >> pid;
  }
  if (pid <= 0) {
    fail("crun create wrote no pid file");
    return 1;
  }
  status_.pid = pid;
  int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  pid_t start = spawnCrun({"start", args_.id}, devnull, devnull);
  int src = start < 0 ? -1 : waitExit(start);
  if (src != 0) {
    std::string why = "crun start exited " + std::to_string(src) + ": " + lastLine(bundle / "crun.log");
    ::kill(pid, SIGKILL);
    waitExit(pid);
    fail(why);
    return 1;
  }
  status_.state = "running";
  save(false);

  // Pump output until the init is reaped and both streams are closed (in a pid namespace every other
  // process dies with the init, so the streams close soon after).
  ::fcntl(outp[0], F_SETFL, O_NONBLOCK);
  ::fcntl(errp[0], F_SETFL, O_NONBLOCK);
  bool outOpen = true, errOpen = true, reaped = false;
  int waitStatus = 0;
  auto reapDeadline = std::chrono::steady_clock::time_point::max();
  while (outOpen || errOpen || !reaped) {
    pollfd pf[3] = {{outOpen ? outp[0] : -1, POLLIN, 0}, {errOpen ? errp[0] : -1, POLLIN, 0}, {sfd, POLLIN, 0}};
    int timeout = -1;
    if (reaped) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(reapDeadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;  // something outside the namespace holds the pipe: stop waiting for it
      timeout = static_cast<int>(left.count());
    }
    int n = ::poll(pf, 3, timeout);
    if (n < 0 && errno != EINTR) break;
    if (outOpen && (pf[0].revents & (POLLIN | POLLHUP | POLLERR))) outOpen = pump(outp[0], outLog);
    if (errOpen && (pf[1].revents & (POLLIN | POLLHUP | POLLERR))) errOpen = pump(errp[0], errLog);
    if (pf[2].revents & POLLIN) {
      signalfd_siginfo si;
      while (::read(sfd, &si, sizeof si) > 0) {
      }
    }
    // Reap everything re-parented to us; the container's init is the one we report.
    for (;;) {
      int st = 0;
      pid_t r = ::waitpid(-1, &st, WNOHANG);
      if (r <= 0) break;
      if (r == pid) {
        reaped = true;
        waitStatus = st;
        reapDeadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      }
    }
  }
  status_.state = "exited";
  status_.finishedMs = nowMs();
  if (WIFSIGNALED(waitStatus)) {
    status_.signal = WTERMSIG(waitStatus);
    status_.exitCode = 128 + status_.signal;
  } else {
    status_.exitCode = WEXITSTATUS(waitStatus);
  }
  save();
  return 0;
}
