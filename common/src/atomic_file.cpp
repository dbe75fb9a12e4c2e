#include "outrider/common/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "outrider/common/unique_fd.hpp"

namespace outrider {

Error errnoError(std::string what, int err) { return Error{what + ": " + std::strerror(err), err}; }

namespace {
Status writeAll(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errnoError("write " + what, errno);
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}
}  // namespace

Status fsyncDir(const std::filesystem::path& dir) {
  UniqueFd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.get() < 0) return errnoError("open directory " + dir.string(), errno);
  if (::fsync(d.get()) != 0) return errnoError("fsync directory " + dir.string(), errno);
  return {};
}

Status writeFileAtomic(const std::filesystem::path& path, std::string_view data, unsigned mode) {
  auto dir = path.parent_path();
  if (dir.empty()) dir = ".";
  std::random_device rd;
  auto tmp = dir / ("." + path.filename().string() + ".tmp" + std::to_string(rd()));
  UniqueFd f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)};
  if (f.get() < 0) return errnoError("create " + tmp.string(), errno);
  auto fail = [&](Error e) -> Status {
    ::unlink(tmp.c_str());
    return e;
  };
  if (::fchmod(f.get(), mode) != 0) return fail(errnoError("chmod " + tmp.string(), errno));
  if (auto s = writeAll(f.get(), data, tmp.string()); !s) return fail(s.error());
  if (::fsync(f.get()) != 0) return fail(errnoError("fsync " + tmp.string(), errno));
  f.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail(errnoError("rename to " + path.string(), errno));
  return fsyncDir(dir);
}

Result<std::string> readFile(const std::filesystem::path& path, std::size_t maxBytes) {
  UniqueFd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.get() < 0) return errnoError("open " + path.string(), errno);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(f.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errnoError("read " + path.string(), errno);
    }
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > maxBytes)
      return Error{"read " + path.string() + ": larger than " + std::to_string(maxBytes) + " bytes", EFBIG};
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

Status makeDirs(const std::filesystem::path& dir, unsigned mode) {
  std::filesystem::path cur;
  for (const auto& part : dir) {
    cur /= part;
    if (cur.empty() || cur == "/") continue;
    if (::mkdir(cur.c_str(), mode) != 0 && errno != EEXIST) return errnoError("mkdir " + cur.string(), errno);
  }
  return {};
}

}  // namespace outrider
