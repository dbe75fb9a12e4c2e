// Container output logs stay within their cap, rotating to one .1 file.
#include <doctest/doctest.h>

#include <fstream>

#include "outrider/vmm/ct_log.hpp"
#include "support/process.hpp"

using namespace outrider::vmm;
namespace fs = std::filesystem;

TEST_CASE("CappedLog rotates at the cap and keeps the newest output") {
  outrider::test::TempDir dir("ctlog");
  auto p = dir / "stdout.log";
  {
    CappedLog log(p, 100);
    for (int i = 0; i < 30; ++i) REQUIRE(log.write(std::to_string(i % 10) + "abcdefghi").ok());  // 10 bytes each
  }
  CHECK(fs::file_size(p) <= 100);
  fs::path old = p;
  old += ".1";
  CHECK(fs::file_size(old) <= 100);
  CHECK(fs::file_size(p) + fs::file_size(old) >= 100);
  auto tail = readLogTail(p, 50);
  CHECK(tail.truncated);
  CHECK(tail.data.size() == 50);
  CHECK(tail.data.substr(40) == "9abcdefghi");  // the very last write is at the end

  // A single write bigger than the cap keeps its last bytes only.
  CappedLog big(dir / "big.log", 16);
  REQUIRE(big.write(std::string(100, 'x') + "0123456789abcdef").ok());
  auto t = readLogTail(dir / "big.log", 1000);
  CHECK(t.data == "0123456789abcdef");
  CHECK_FALSE(t.truncated);
}

TEST_CASE("CappedLog continues an existing file and counts its size") {
  outrider::test::TempDir dir("ctlog");
  auto p = dir / "x.log";
  std::ofstream(p) << std::string(90, 'a');
  CappedLog log(p, 100);
  REQUIRE(log.write("bbbbbbbbbbbbbbbbbbbb").ok());  // would pass 100: rotates first
  CHECK(fs::file_size(p) == 20);
  auto tail = readLogTail(p, 1000);
  CHECK(tail.data == std::string(90, 'a') + std::string(20, 'b'));
}
