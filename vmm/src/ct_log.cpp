#include "outrider/vmm/ct_log.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

namespace outrider::vmm {

namespace fs = std::filesystem;

CappedLog::CappedLog(fs::path path, std::uint64_t maxBytes) : path_(std::move(path)), max_(std::max<std::uint64_t>(maxBytes, 1)) {}

CappedLog::~CappedLog() {
  if (fd_ >= 0) ::close(fd_);
}

Status CappedLog::open() {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd_ < 0) return errnoError("open " + path_.string(), errno);
  struct stat st {};
  size_ = ::fstat(fd_, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
  return {};
}

Status CappedLog::rotate() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  fs::path old = path_;
  old += ".1";
  if (::rename(path_.c_str(), old.c_str()) != 0 && errno != ENOENT)
    return errnoError("rotate " + path_.string(), errno);
  return open();
}

Status CappedLog::write(std::string_view data) {
  if (fd_ < 0)
    if (auto st = open(); !st) return st;
  if (data.size() > max_) data = data.substr(data.size() - max_);  // only the newest max bytes can be kept
  if (size_ + data.size() > max_)
    if (auto st = rotate(); !st) return st;
  while (!data.empty()) {
    ssize_t n = ::write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errnoError("write " + path_.string(), errno);
    }
    size_ += static_cast<std::uint64_t>(n);
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

namespace {
std::string readAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

LogTailData readLogTail(const fs::path& path, std::uint64_t maxBytes) {
  fs::path old = path;
  old += ".1";
  std::string all = readAll(old) + readAll(path);
  LogTailData out;
  if (all.size() > maxBytes) {
    out.truncated = true;
    out.data = all.substr(all.size() - maxBytes);
  } else {
    out.data = std::move(all);
  }
  return out;
}

}  // namespace outrider::vmm
