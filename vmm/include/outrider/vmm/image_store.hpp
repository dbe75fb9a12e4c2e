#pragma once
// Container images on the node: a rootfs tarball (.tar or .tar.gz) or an OCI image layout directory,
// unpacked into IMAGES/<name>/rootfs. Every tar stream is checked entry by entry before it is handed to
// tar for extraction (no absolute paths, no "..", nothing through a symlink, no symlink pointing out of
// the root, no device nodes); the import is built in a temp dir and renamed into place, so a crash
// leaves either the old image or the new one.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/result.hpp"

namespace outrider::vmm {

struct TarEntry {
  std::string path;      // normalised: no leading "./", no trailing '/'; "" for the root itself
  char type = '0';       // ustar typeflag ('0' file, '1' hard link, '2' symlink, '5' dir, ...)
  std::string link;      // link target for '1' and '2'
  std::uint64_t size = 0;
};

/// Checks tar entries as they come. `symlinks` carries over between the layers of one image.
class TarChecker {
 public:
  /// Check one entry; Error names the entry and the reason.
  Status check(const TarEntry& e);
  const std::set<std::string>& symlinks() const { return symlinks_; }

 private:
  std::set<std::string> symlinks_;
};

/// Parse a whole (uncompressed) tar file into entries (GNU long names and pax path/linkpath honoured).
Result<std::vector<TarEntry>> readTarEntries(const std::filesystem::path& tarFile);

/// Lexically normalise an archive path: strip "./" and duplicate '/', drop a trailing '/'.
std::string normaliseTarPath(std::string_view p);

struct ImageInfoData {
  std::string name;
  std::string digest;       // "sha256:<hex>": of the tarball, or of the OCI manifest
  std::uint64_t sizeBytes = 0;  // unpacked size of regular files
  bool unchanged = false;   // the same digest was already imported
};

class ImageStore {
 public:
  explicit ImageStore(std::filesystem::path dir);
  /// IMAGES/<name>/rootfs.
  std::filesystem::path rootfs(const std::string& name) const;
  bool has(const std::string& name) const;
  /// Digest recorded for an imported image.
  std::optional<ImageInfoData> info(const std::string& name) const;
  /// Import `source` as `name` (blocking; run it off the event loop). Re-importing the same digest is a
  /// no-op; a different digest replaces the image, unless `inUseBy` names a container that shares it
  /// (then Error with code EBUSY and nothing changes).
  Result<ImageInfoData> import(const std::string& name, const std::filesystem::path& source,
                               const std::string& inUseBy = "");

 private:
  std::filesystem::path dir_;
};

}  // namespace outrider::vmm
