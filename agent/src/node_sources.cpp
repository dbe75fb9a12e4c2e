#include "outrider/agent/node_sources.hpp"

namespace outrider::agent {

namespace v1 = outrider::v1;

namespace {

constexpr auto kTimeout = std::chrono::seconds(5);

bool isError(const v1::LocalReply& r) { return r.has_error() && r.error().code() != v1::LocalError::CODE_UNSPECIFIED; }

Sample sample(v1::TelemetryStream stream, const char* measurement,
              std::vector<std::pair<std::string, std::string>> tags, const char* field, double value) {
  return Sample{stream, measurement, std::move(tags), field, value};
}

class VmmSource final : public TelemetrySource {
 public:
  explicit VmmSource(DaemonMonitor& d) : daemons_(d) {}
  std::string name() const override { return "vmm"; }
  void collect(Done done) override {
    // Two requests; the answer is whatever both gave, ok when at least one did.
    auto st = std::make_shared<State>();
    st->done = std::move(done);
    v1::LocalRequest vms;
    vms.mutable_vm_list()->set_with_stats(true);
    daemons_.call("vmm", std::move(vms), kTimeout, [st](Result<v1::LocalReply> r) {
      if (r && !isError(*r)) {
        st->ok = true;
        for (const auto& vm : r->vm_list().vms()) {
          std::vector<std::pair<std::string, std::string>> tags{{"name", vm.name()}};
          const auto& s = vm.stats();
          auto add = [&](const char* f, double v) { st->out.push_back(sample(v1::TELEMETRY_STREAM_VM, "vm", tags, f, v)); };
          add("running", vm.state() == "running" ? 1 : 0);
          add("cpu_time_ns", static_cast<double>(s.cpu_time_ns()));
          add("memory_bytes", static_cast<double>(s.memory_bytes()));
          add("disk_read_bytes", static_cast<double>(s.disk_read_bytes()));
          add("disk_write_bytes", static_cast<double>(s.disk_write_bytes()));
          add("net_rx_bytes", static_cast<double>(s.net_rx_bytes()));
          add("net_tx_bytes", static_cast<double>(s.net_tx_bytes()));
        }
      }
      st->finishOne();
    });
    v1::LocalRequest cts;
    cts.mutable_ct_list()->set_with_stats(true);
    daemons_.call("vmm", std::move(cts), kTimeout, [st](Result<v1::LocalReply> r) {
      if (r && !isError(*r)) {
        st->ok = true;
        for (const auto& c : r->ct_list().containers()) {
          std::vector<std::pair<std::string, std::string>> tags{{"name", c.name()}};
          const auto& s = c.stats();
          auto add = [&](const char* f, double v) {
            st->out.push_back(sample(v1::TELEMETRY_STREAM_CT, "container", tags, f, v));
          };
          add("running", c.state() == "running" ? 1 : 0);
          add("restarts", c.restarts());
          add("cpu_usage_ns", static_cast<double>(s.cpu_usage_ns()));
          add("memory_bytes", static_cast<double>(s.memory_bytes()));
          add("pids", s.pids());
          add("oom_kills", static_cast<double>(s.oom_kills()));
        }
      }
      st->finishOne();
    });
  }

 private:
  struct State {
    int left = 2;
    bool ok = false;
    std::vector<Sample> out;
    Done done;
    void finishOne() {
      if (--left == 0) done(ok, std::move(out));
    }
  };
  DaemonMonitor& daemons_;
};

class NetdSource final : public TelemetrySource {
 public:
  explicit NetdSource(DaemonMonitor& d) : daemons_(d) {}
  std::string name() const override { return "netd"; }
  void collect(Done done) override {
    v1::LocalRequest req;
    req.mutable_tunnel_status();
    daemons_.call("netd", std::move(req), kTimeout, [done = std::move(done)](Result<v1::LocalReply> r) {
      if (!r || isError(*r)) return done(false, {});
      std::vector<Sample> out;
      for (const auto& t : r->tunnels().tunnels()) {
        out.push_back(sample(v1::TELEMETRY_STREAM_TUNNEL, "tunnel", {{"interface", t.interface()}}, "failovers",
                             static_cast<double>(t.failovers())));
        for (const auto& h : t.hubs()) {
          std::vector<std::pair<std::string, std::string>> tags{{"interface", t.interface()}, {"hub", h.name()}};
          auto add = [&](const char* f, double v) {
            out.push_back(sample(v1::TELEMETRY_STREAM_TUNNEL, "tunnel_hub", tags, f, v));
          };
          add("rx_bytes", static_cast<double>(h.rx_bytes()));
          add("tx_bytes", static_cast<double>(h.tx_bytes()));
          if (h.probe_rtt_us()) add("probe_rtt_ms", h.probe_rtt_us() / 1000.0);
          add("misses", h.misses());
          add("healthy", h.healthy() ? 1 : 0);
          add("active", h.name() == t.active_hub() ? 1 : 0);
        }
      }
      done(true, std::move(out));
    });
  }

 private:
  DaemonMonitor& daemons_;
};

class AgentSource final : public TelemetrySource {
 public:
  explicit AgentSource(std::function<std::vector<Sample>()> f) : f_(std::move(f)) {}
  std::string name() const override { return "agent"; }
  void collect(Done done) override { done(true, f_()); }

 private:
  std::function<std::vector<Sample>()> f_;
};

}  // namespace

std::shared_ptr<TelemetrySource> makeVmmSource(DaemonMonitor& d) { return std::make_shared<VmmSource>(d); }
std::shared_ptr<TelemetrySource> makeNetdSource(DaemonMonitor& d) { return std::make_shared<NetdSource>(d); }
std::shared_ptr<TelemetrySource> makeAgentSource(std::function<std::vector<Sample>()> f) {
  return std::make_shared<AgentSource>(std::move(f));
}

}  // namespace outrider::agent
