#pragma once
// Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.
#include <filesystem>
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"

namespace outrider {

/// Replace `path` with `data` atomically; after success the new content survives power loss.
Status writeFileAtomic(const std::filesystem::path& path, std::string_view data, unsigned mode = 0644);
/// Whole file into a string.
Result<std::string> readFile(const std::filesystem::path& path, std::size_t maxBytes = 64u << 20);
/// fsync a directory (after creating, renaming or removing entries in it).
Status fsyncDir(const std::filesystem::path& dir);
/// mkdir -p with `mode` for directories it creates.
Status makeDirs(const std::filesystem::path& dir, unsigned mode = 0755);

}  // namespace outrider
