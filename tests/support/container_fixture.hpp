#pragma once
// Containers in tests: checks that the host can run crun (host prep done), builds the busybox rootfs
// tarball once per build tree, and hands out a [containers] config section that keeps everything a
// test makes (runtime root, images, bundles, a unique cgroup parent) in one temp dir. The destructor
// deletes every container left under that runtime root and the cgroup dirs of that parent, also when
// a check failed.
#include <filesystem>
#include <string>
#include <vector>

namespace outrider::test {

class ContainerFixture {
 public:
  /// Throws std::runtime_error with a clear message when the host is not prepared or the rootfs
  /// tarball cannot be built.
  explicit ContainerFixture(std::filesystem::path dir);
  ~ContainerFixture();
  ContainerFixture(const ContainerFixture&) = delete;
  ContainerFixture& operator=(const ContainerFixture&) = delete;

  /// "" when crun can run here, else what is missing and how to fix it.
  static std::string hostProblem();
  /// The busybox rootfs tarball (cached in the build tree).
  static std::filesystem::path rootfsTarball();

  /// A [containers] section for vmm.toml pointing into the fixture's dir.
  std::string vmmConfig() const;
  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path runtimeRoot() const { return dir_ / "crun"; }
  std::filesystem::path stateDir() const { return dir_ / "containers"; }
  std::filesystem::path imagesDir() const { return dir_ / "images"; }
  const std::string& cgroupParent() const { return cgroupParent_; }
  /// Ids that `crun --root RUNTIME_ROOT list` shows.
  std::vector<std::string> crunList() const;
  /// Existing cgroup dirs of the fixture's parent (any controller), e.g. to check they are gone.
  std::vector<std::filesystem::path> cgroupDirs(const std::string& sub = "") const;

 private:
  std::filesystem::path dir_;
  std::string cgroupParent_;
};

}  // namespace outrider::test
