#include <csignal>
#include <iostream>
#include <string>
#include <vector>

#include "outrider/ctl/app.hpp"
#include "outrider/ctl/hub_client.hpp"

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // `outriderctl nodes | head` must not kill us mid-write
  outrider::ctl::MosquittoLib mosquitto;
  std::vector<std::string> args(argv + 1, argv + argc);
  return outrider::ctl::runCtl(args, std::cout, std::cerr);
}
