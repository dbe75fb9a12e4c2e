#include <doctest/doctest.h>
#include <sys/stat.h>

#include <filesystem>

#include "outrider/common/atomic_file.hpp"

namespace fs = std::filesystem;

TEST_CASE("atomic write replaces content, sets mode, leaves no temp files") {
  char tmpl[] = "/tmp/outrider-atomic-XXXXXX";
  fs::path dir = ::mkdtemp(tmpl);
  auto f = dir / "state.bin";
  REQUIRE(outrider::writeFileAtomic(f, "first", 0600).ok());
  REQUIRE(outrider::writeFileAtomic(f, std::string("sec\0ond", 7), 0600).ok());
  auto back = outrider::readFile(f);
  REQUIRE(back.ok());
  CHECK(*back == std::string("sec\0ond", 7));
  struct stat st{};
  REQUIRE(::stat(f.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);
  CHECK_FALSE(outrider::writeFileAtomic(dir / "no-such-dir" / "x", "y").ok());
  CHECK_FALSE(outrider::readFile(dir / "absent").ok());
  fs::remove_all(dir);
}
