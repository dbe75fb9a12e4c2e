#include <doctest/doctest.h>

#include "outrider/ctl/workload_format.hpp"

using namespace outrider;
using namespace outrider::ctl;

TEST_CASE("byte sizes") {
  CHECK(formatBytes(17) == "17 B");
  CHECK(formatBytes(512 * 1024) == "512.0 KiB");
  CHECK(formatBytes(3ull << 30) == "3.0 GiB");
}

TEST_CASE("the VM table shows state against desired state, and errors below") {
  v1::VmList list;
  CHECK(formatVmTable(list, 0) == "no VMs\n");
  auto* vm = list.add_vms();
  vm->set_name("web");
  vm->set_state("shutoff");
  vm->set_desired_running(true);
  vm->set_accel("tcg");
  vm->set_vcpus(2);
  vm->set_memory_mib(256);
  vm->mutable_stats()->set_cpu_time_ns(2'500'000'000);
  vm->set_last_error("base image missing");
  auto text = formatVmTable(list, 0);
  CHECK(text.find("NAME  STATE") == 0);
  CHECK(text.find("web   shutoff (want running)  tcg    2      256.0 MiB  2.5s") != std::string::npos);
  CHECK(text.find("web: base image missing\n") != std::string::npos);
  auto json = vmListJson(list);
  CHECK(json.find("{\"name\":\"web\",\"state\":\"shutoff\",\"accel\":\"tcg\"") == 1);
  CHECK(json.find("\"cpu_time_ns\":2500000000") != std::string::npos);
}

TEST_CASE("the container table shows exit codes, signals and OOM kills") {
  v1::ContainerList list;
  auto* a = list.add_containers();
  a->set_name("a");
  a->set_state("stopped");
  a->set_exited(true);
  a->set_exit_code(3);
  auto* b = list.add_containers();
  b->set_name("b");
  b->set_state("stopped");
  b->set_exited(true);
  b->set_signal(9);
  b->set_oom_killed(true);
  b->set_restarts(4);
  auto text = formatContainerTable(list, 0);
  CHECK(text.find("a     stopped  -      -    3") != std::string::npos);
  CHECK(text.find("signal 9 (oom)  4") != std::string::npos);
  CHECK(containerListJson(list).find("\"oom_killed\":true") != std::string::npos);
}

TEST_CASE("tunnel status and apply results") {
  v1::TunnelStatusList list;
  CHECK(formatTunnels(list, 0) == "no tunnels\n");
  auto* t = list.add_tunnels();
  t->set_interface("wg-hub");
  t->set_up(true);
  t->set_backend("wireguard-go");
  t->set_active_hub("home");
  t->set_failovers(2);
  auto* h = t->add_hubs();
  h->set_name("home");
  h->set_state("active");
  h->set_probe_rtt_us(1500);
  auto text = formatTunnels(list, 0);
  CHECK(text.find("interface:   wg-hub (up)") != std::string::npos);
  CHECK(text.find("active hub:  home") != std::string::npos);
  CHECK(text.find("home  0     active  -         never      1.50 ms") != std::string::npos);
  CHECK(tunnelsJson(list).find("\"active_hub\":\"home\",\"failovers\":2") != std::string::npos);

  v1::ApplyResult r;
  r.set_manifest_version(4);
  auto* ok = r.add_results();
  ok->set_kind("vm");
  ok->set_name("web");
  ok->set_ok(true);
  ok->set_action("started");
  auto* bad = r.add_results();
  bad->set_kind("container");
  bad->set_name("c");
  bad->set_error("image 'x' not found");
  auto out = formatApplyResult(r);
  CHECK(out.find("manifest version 4\n") == 0);
  CHECK(out.find("vm         web   ok      started") != std::string::npos);
  CHECK(out.find("container  c     failed  image 'x' not found") != std::string::npos);
  CHECK(applyResultJson(r).find("{\"kind\":\"container\",\"name\":\"c\",\"ok\":false") != std::string::npos);
}
