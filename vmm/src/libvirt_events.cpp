// The one file that turns libvirt's event loop callbacks into asio operations. libvirt's semantics:
//  - a handle watch fires while its fd is ready for any of its `events` (level-triggered);
//  - a timeout of N ms fires every N ms, 0 fires on every loop iteration, -1 is disabled;
//  - a free callback must run later, never inside the remove call (libvirt may hold locks there).
// Asio's reactor waits are edge-triggered (EPOLLET), so before every wait the fd is polled once with
// a zero timeout; a readiness that came while nobody waited is not lost.
#include "outrider/vmm/libvirt_events.hpp"

#include <libvirt/libvirt.h>
#include <poll.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <map>
#include <memory>
#include <mutex>

#include "outrider/common/log.hpp"

namespace outrider::vmm {

namespace asio = boost::asio;

namespace {

struct Watch {
  int id = 0;
  int fd = -1;
  int events = 0;  // guarded by Loop::mu
  bool removed = false;  // guarded by Loop::mu
  virEventHandleCallback cb = nullptr;
  void* opaque = nullptr;
  virFreeCallback ff = nullptr;
  asio::io_context* io = nullptr;
  // io thread only:
  int dupFd = -1;
  std::unique_ptr<asio::posix::stream_descriptor> sd;
  std::unique_ptr<asio::steady_timer> retry;
  bool pending[2] = {false, false};  // read, write
};

struct Timeout {
  int id = 0;
  int ms = -1;           // guarded by Loop::mu
  bool removed = false;  // guarded by Loop::mu
  virEventTimeoutCallback cb = nullptr;
  void* opaque = nullptr;
  virFreeCallback ff = nullptr;
  asio::io_context* io = nullptr;
  // io thread only:
  std::unique_ptr<asio::steady_timer> timer;
  unsigned generation = 0;
};

struct Loop {
  std::mutex mu;
  asio::io_context* io = nullptr;
  int nextId = 1;
  std::map<int, std::shared_ptr<Watch>> watches;
  std::map<int, std::shared_ptr<Timeout>> timeouts;
};

Loop& loop() {
  // libvirt's event implementation is process-wide by its API; this is its one home.
  static Loop l;
  return l;
}

short pollMask(int events) {
  short m = 0;
  if (events & VIR_EVENT_HANDLE_READABLE) m |= POLLIN;
  if (events & VIR_EVENT_HANDLE_WRITABLE) m |= POLLOUT;
  return m;
}

int virEvents(short revents) {
  int e = 0;
  if (revents & POLLIN) e |= VIR_EVENT_HANDLE_READABLE;
  if (revents & POLLOUT) e |= VIR_EVENT_HANDLE_WRITABLE;
  if (revents & POLLERR) e |= VIR_EVENT_HANDLE_ERROR;
  if (revents & POLLHUP) e |= VIR_EVENT_HANDLE_HANGUP;
  return e;
}

// What of `interest` the fd is ready for now (errors and hangups always count).
int readyNow(int fd, int interest) {
  pollfd p{fd, pollMask(interest), 0};
  if (::poll(&p, 1, 0) <= 0) return 0;
  return virEvents(p.revents) & (interest | VIR_EVENT_HANDLE_ERROR | VIR_EVENT_HANDLE_HANGUP);
}

void armDir(const std::shared_ptr<Watch>& w, int dir);

void fire(const std::shared_ptr<Watch>& w, int dir) {
  w->pending[dir] = false;
  int events = 0;
  virEventHandleCallback cb = nullptr;
  void* opaque = nullptr;
  {
    std::lock_guard lk(loop().mu);
    if (w->removed) return;
    events = w->events;
    cb = w->cb;
    opaque = w->opaque;
  }
  int want = dir == 0 ? VIR_EVENT_HANDLE_READABLE : VIR_EVENT_HANDLE_WRITABLE;
  if (!(events & want)) return;  // interest dropped meanwhile; an update arms it again
  int ready = readyNow(w->dupFd, events);
  if (ready) {
    cb(w->id, w->fd, ready, opaque);
    // Still ready after the callback: libvirt left it for another thread that owns the socket for a
    // call in progress. Look again shortly instead of spinning.
    {
      std::lock_guard lk(loop().mu);
      if (w->removed || !(w->events & want)) return;
    }
    if (readyNow(w->dupFd, want) && w->retry && !w->pending[dir]) {
      w->pending[dir] = true;
      w->retry->expires_after(std::chrono::milliseconds(1));
      w->retry->async_wait([w, dir](boost::system::error_code ec) {
        if (ec) {
          w->pending[dir] = false;
          return;
        }
        fire(w, dir);
      });
      return;
    }
  }
  armDir(w, dir);
}

// Make sure a wait is pending for direction `dir` (0 read, 1 write) if libvirt wants it. io thread.
void armDir(const std::shared_ptr<Watch>& w, int dir) {
  if (!w->sd || w->pending[dir]) return;
  int want = dir == 0 ? VIR_EVENT_HANDLE_READABLE : VIR_EVENT_HANDLE_WRITABLE;
  {
    std::lock_guard lk(loop().mu);
    if (w->removed || !(w->events & want)) return;
  }
  w->pending[dir] = true;
  if (readyNow(w->dupFd, want)) {
    asio::post(*w->io, [w, dir] { fire(w, dir); });
    return;
  }
  w->sd->async_wait(dir == 0 ? asio::posix::stream_descriptor::wait_read : asio::posix::stream_descriptor::wait_write,
                    [w, dir](boost::system::error_code ec) {
                      if (ec) {
                        w->pending[dir] = false;
                        return;
                      }
                      fire(w, dir);
                    });
}

void armBoth(const std::shared_ptr<Watch>& w) {
  armDir(w, 0);
  armDir(w, 1);
}

int addHandle(int fd, int events, virEventHandleCallback cb, void* opaque, virFreeCallback ff) {
  auto w = std::make_shared<Watch>();
  {
    std::lock_guard lk(loop().mu);
    if (!loop().io) return -1;
    w->id = loop().nextId++;
    w->fd = fd;
    w->events = events;
    w->cb = cb;
    w->opaque = opaque;
    w->ff = ff;
    w->io = loop().io;
    loop().watches[w->id] = w;
  }
  asio::post(*w->io, [w] {
    {
      std::lock_guard lk(loop().mu);
      if (w->removed) return;
    }
    // Our own descriptor for the same open file: asio may register and close it freely without
    // touching libvirt's fd.
    w->dupFd = ::fcntl(w->fd, F_DUPFD_CLOEXEC, 0);
    if (w->dupFd < 0) {
      LOG_ERR("libvirt event loop: dup fd {}: {}", w->fd, std::strerror(errno));
      return;
    }
    w->sd = std::make_unique<asio::posix::stream_descriptor>(*w->io, w->dupFd);
    w->retry = std::make_unique<asio::steady_timer>(*w->io);
    armBoth(w);
  });
  return w->id;
}

void updateHandle(int watch, int events) {
  std::shared_ptr<Watch> w;
  {
    std::lock_guard lk(loop().mu);
    auto it = loop().watches.find(watch);
    if (it == loop().watches.end()) return;
    w = it->second;
    w->events = events;
  }
  asio::post(*w->io, [w] { armBoth(w); });
}

int removeHandle(int watch) {
  std::shared_ptr<Watch> w;
  {
    std::lock_guard lk(loop().mu);
    auto it = loop().watches.find(watch);
    if (it == loop().watches.end()) return -1;
    w = it->second;
    w->removed = true;
    loop().watches.erase(it);
  }
  asio::post(*w->io, [w] {
    if (w->sd) {
      boost::system::error_code ec;
      w->sd->cancel(ec);
      w->sd->close(ec);  // closes our duplicate only
    }
    if (w->retry) w->retry->cancel();
    if (w->ff) w->ff(w->opaque);
  });
  return 0;
}

void armTimeout(const std::shared_ptr<Timeout>& t) {
  int ms;
  {
    std::lock_guard lk(loop().mu);
    if (t->removed) return;
    ms = t->ms;
  }
  unsigned gen = ++t->generation;
  if (!t->timer) return;
  t->timer->cancel();
  if (ms < 0) return;
  t->timer->expires_after(std::chrono::milliseconds(ms));
  t->timer->async_wait([t, gen](boost::system::error_code ec) {
    if (ec || gen != t->generation) return;
    virEventTimeoutCallback cb;
    void* opaque;
    {
      std::lock_guard lk(loop().mu);
      if (t->removed) return;
      cb = t->cb;
      opaque = t->opaque;
    }
    cb(t->id, opaque);
    if (gen == t->generation) armTimeout(t);  // periodic, unless the callback changed it already
  });
}

int addTimeout(int ms, virEventTimeoutCallback cb, void* opaque, virFreeCallback ff) {
  auto t = std::make_shared<Timeout>();
  {
    std::lock_guard lk(loop().mu);
    if (!loop().io) return -1;
    t->id = loop().nextId++;
    t->ms = ms;
    t->cb = cb;
    t->opaque = opaque;
    t->ff = ff;
    t->io = loop().io;
    loop().timeouts[t->id] = t;
  }
  asio::post(*t->io, [t] {
    t->timer = std::make_unique<asio::steady_timer>(*t->io);
    armTimeout(t);
  });
  return t->id;
}

void updateTimeout(int timer, int ms) {
  std::shared_ptr<Timeout> t;
  {
    std::lock_guard lk(loop().mu);
    auto it = loop().timeouts.find(timer);
    if (it == loop().timeouts.end()) return;
    t = it->second;
    t->ms = ms;
  }
  asio::post(*t->io, [t] { armTimeout(t); });
}

int removeTimeout(int timer) {
  std::shared_ptr<Timeout> t;
  {
    std::lock_guard lk(loop().mu);
    auto it = loop().timeouts.find(timer);
    if (it == loop().timeouts.end()) return -1;
    t = it->second;
    t->removed = true;
    loop().timeouts.erase(it);
  }
  asio::post(*t->io, [t] {
    ++t->generation;
    if (t->timer) t->timer->cancel();
    if (t->ff) t->ff(t->opaque);
  });
  return 0;
}

}  // namespace

void installLibvirtEventLoop(asio::io_context& io) {
  static std::once_flag once;
  {
    std::lock_guard lk(loop().mu);
    loop().io = &io;
  }
  std::call_once(once, [] {
    virEventRegisterImpl(addHandle, updateHandle, removeHandle, addTimeout, updateTimeout, removeTimeout);
  });
}

std::size_t libvirtEventRegistrations() {
  std::lock_guard lk(loop().mu);
  return loop().watches.size() + loop().timeouts.size();
}

}  // namespace outrider::vmm
