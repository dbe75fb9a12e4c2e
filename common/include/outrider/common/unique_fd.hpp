#pragma once
// A file descriptor that closes itself: the one owner of an fd from open()/socket()/pipe2() to close().
//   UniqueFd f{::open(path, O_RDONLY | O_CLOEXEC)};
//   if (!f) return errnoError("open " + path, errno);
#include <unistd.h>

#include <utility>

namespace outrider {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  /// Gives the fd up without closing it.
  int release() { return std::exchange(fd_, -1); }
  /// Closes the fd held (its close error is not reported: the data paths fsync before) and takes `fd`.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace outrider
