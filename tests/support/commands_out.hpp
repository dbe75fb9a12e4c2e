#pragma once
// Run a command to completion and keep what it printed (stdout and stderr together).
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support/process.hpp"

namespace outrider::test {

struct CommandOutput {
  int rc = -1;
  std::string text;
};

/// argv[0] is looked up in PATH; the output goes through a file in `scratch`.
inline CommandOutput runCapture(const std::vector<std::string>& argv, const TempDir& scratch) {
  static int n = 0;
  auto log = scratch / ("cmd-" + std::to_string(++n) + ".log");
  CommandOutput out;
  out.rc = run(argv, log);
  std::ifstream in(log);
  std::ostringstream ss;
  ss << in.rdbuf();
  out.text = ss.str();
  return out;
}

}  // namespace outrider::test
