#pragma once
// Container output files capped in size: when a write would take a stream past its cap, the file is
// rotated to NAME.1 (replacing the previous .1) and a new one started, so each stream keeps between
// max and 2 x max bytes of its most recent output on disk.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"

namespace outrider::vmm {

class CappedLog {
 public:
  CappedLog(std::filesystem::path path, std::uint64_t maxBytes);
  ~CappedLog();
  CappedLog(const CappedLog&) = delete;
  CappedLog& operator=(const CappedLog&) = delete;
  Status write(std::string_view data);
  std::uint64_t size() const { return size_; }

 private:
  Status open();
  Status rotate();
  std::filesystem::path path_;
  std::uint64_t max_;
  std::uint64_t size_ = 0;
  int fd_ = -1;
};

struct LogTailData {
  std::string data;
  bool truncated = false;  // there was older output before `data`
};

/// The last `maxBytes` of a stream written by CappedLog (NAME.1 then NAME).
LogTailData readLogTail(const std::filesystem::path& path, std::uint64_t maxBytes);

}  // namespace outrider::vmm
