#include "outrider/agent/agent.hpp"

#include <fcntl.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>

#include "outrider/agent/daemon_monitor.hpp"
#include "outrider/agent/hook_report.hpp"
#include "outrider/agent/hub_session.hpp"
#include "outrider/agent/journal.hpp"
#include "outrider/agent/node_sources.hpp"
#include "outrider/agent/telemetry_service.hpp"
#include "outrider/agent/processor.hpp"
#include "outrider/agent/verifier.hpp"
#include "outrider/agent/update_service.hpp"
#include "outrider/agent/boot_check.hpp"
#include "outrider/agent/workloads.hpp"
#include "outrider/common/atomic_file.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/topics.hpp"
#include "outrider/common/version.hpp"
#include "outrider/hooks/runner.hpp"

namespace outrider::agent {

namespace asio = boost::asio;
using outrider::v1::DaemonHealth;
using outrider::v1::NodeStatus;

struct Agent::Impl {
  asio::io_context& io;
  AgentConfig cfg;
  const Clock& clock;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::string hostname, arch;
  std::optional<CommandJournal> journal;
  std::unique_ptr<CommandVerifier> verifier;
  std::unique_ptr<CommandProcessor> processor;
  std::unique_ptr<HubSession> hub;
  std::unique_ptr<DaemonMonitor> monitor;
  std::unique_ptr<Workloads> workloads;
  std::unique_ptr<UpdateService> updates;
  std::unique_ptr<BootCheck> bootCheck;
  // Telemetry batches go out over the hub session, QoS 1, dropped from the spool only on PUBACK.
  struct HubSink final : TelemetrySink {
    Impl& self;
    explicit HubSink(Impl& s) : self(s) {}
    bool online() const override { return self.hub && self.hub->connected(); }
    void publish(std::string payload, std::function<void(bool)> done) override {
      if (!self.hub) return done(false);
      self.hub->publishTracked(topics::telemetry(self.cfg.nodeId), std::move(payload), std::move(done));
    }
  };
  HubSink sink{*this};
  std::unique_ptr<TelemetryService> telemetry;
  std::string telemetryProblem;
  std::uint64_t eventSeq = 0;
  asio::steady_timer housekeeping;
  // Hooks run on the runner's own thread; a result that arrives after the agent is gone is dropped.
  std::unique_ptr<hooks::HookRunner> hookRunner;
  std::shared_ptr<int> alive = std::make_shared<int>(0);

  Impl(asio::io_context& i, AgentConfig c, const Clock& cl) : io(i), cfg(std::move(c)), clock(cl), housekeeping(i) {
    char h[256] = {};
    ::gethostname(h, sizeof h - 1);
    hostname = h;
    utsname u{};
    if (::uname(&u) == 0) arch = u.machine;
  }

  NodeStatus status(bool online) const {
    NodeStatus s;
    s.set_node_id(cfg.nodeId);
    s.set_online(online);
    s.set_version(std::string(outrider::version()));
    s.set_at_ms(clock.nowMs());
    s.set_hostname(hostname);
    s.set_arch(arch);
    if (!online) return s;  // the will is made once at connect time: keep it to what stays true
    s.set_uptime_s(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started).count()));
    if (hub) s.set_broker(hub->brokerText());
    if (workloads) {
      s.set_manifest_version(workloads->manifestVersion());
      s.set_wireguard_public_key(workloads->wireguardPublicKey());
    }
    auto* self = s.add_daemons();
    self->set_name("agent");
    self->set_state(DaemonHealth::HEALTHY);
    self->set_version(std::string(outrider::version()));
    self->set_uptime_s(s.uptime_s());
    self->set_checked_at_ms(s.at_ms());
    if (processor)
      self->set_detail(std::to_string(processor->counters().received) + " commands received, " +
                       std::to_string(processor->inFlight()) + " running" +
                       (telemetryProblem.empty() ? "" : "; telemetry off: " + telemetryProblem));
    if (!telemetryProblem.empty()) self->set_state(DaemonHealth::DEGRADED);
    if (monitor)
      for (auto& h : monitor->health()) *s.add_daemons() = h;
    return s;
  }

  void publishEvent(const std::string& source, const std::string& kind, const std::string& subject,
                    const std::string& detail) {
    outrider::v1::NodeEvent ev;
    ev.set_node_id(cfg.nodeId);
    ev.set_seq(++eventSeq);
    ev.set_at_ms(clock.nowMs());
    ev.set_source(source);
    ev.set_kind(kind);
    ev.set_subject(subject);
    ev.set_detail(detail);
    if (hub && hub->connected()) (void)hub->publish(topics::events(cfg.nodeId), ev.SerializeAsString());
  }

  // `hook run` from the hub: the event's hooks, off the loop; each hook's result is logged and published
  // as a hook.result event, and the reply carries them all (SUCCEEDED only when every hook succeeded).
  void runHooks(const HookCommand& c, CommandProcessor::DoneFn done) {
    hooks::HookEnv env(c.op.env().begin(), c.op.env().end());
    std::weak_ptr<int> life = alive;
    hookRunner->runAsync(c.op.event(), std::move(env), io.get_executor(),
                         [this, life, done = std::move(done)](Result<hooks::RunResult> r) {
                           if (life.expired()) return;
                           outrider::v1::CommandReply reply;
                           if (!r) {
                             LOG_WARN("hooks: {}", r.error().message);
                             reply.set_kind(outrider::v1::CommandReply::FAILED);
                             reply.set_message(r.error().message);
                             return done(std::move(reply));
                           }
                           logHookRun(*r);
                           const std::string event(hooks::eventName(r->event));
                           for (const auto& h : r->hooks)
                             publishEvent("agent", "hook.result", event + "/" + h.name, hookEventDetail(h));
                           *reply.mutable_hook() = toProto(*r);
                           reply.set_kind(r->ok() ? outrider::v1::CommandReply::SUCCEEDED
                                                  : outrider::v1::CommandReply::FAILED);
                           reply.set_message(reply.hook().summary());
                           done(std::move(reply));
                         });
  }

  UpdateHost updateHost() {
    UpdateHost h;
    h.hubConnected = [this] { return hub && hub->connected(); };
    h.daemons = [this] { return monitor->health(); };
    h.manifest = [this] { return workloads->manifest(); };
    h.guests = [this](std::function<void(Result<std::map<std::string, std::string>>)> done) {
      auto acc = std::make_shared<std::map<std::string, std::string>>();
      v1::LocalRequest vms;
      vms.mutable_vm_list();
      monitor->call("vmm", std::move(vms), std::chrono::seconds(5), [this, acc, done](Result<v1::LocalReply> r) {
        if (!r || (r->has_error() && r->error().code() != v1::LocalError::CODE_UNSPECIFIED))
          return done(Error{r ? r->error().message() : r.error().message});
        for (const auto& vm : r->vm_list().vms()) (*acc)["vm " + vm.name()] = vm.state();
        v1::LocalRequest cts;
        cts.mutable_ct_list();
        monitor->call("vmm", std::move(cts), std::chrono::seconds(5), [acc, done](Result<v1::LocalReply> r2) {
          if (!r2 || (r2->has_error() && r2->error().code() != v1::LocalError::CODE_UNSPECIFIED))
            return done(Error{r2 ? r2->error().message() : r2.error().message});
          for (const auto& c : r2->ct_list().containers()) (*acc)["container " + c.name()] = c.state();
          done(std::move(*acc));
        });
      });
    };
    h.runHooks = [this](std::string event, hooks::HookEnv env, std::function<void(Result<hooks::RunResult>)> done) {
      std::weak_ptr<int> life = alive;
      hookRunner->runAsync(std::move(event), std::move(env), io.get_executor(),
                           [this, life, done = std::move(done)](Result<hooks::RunResult> r) {
                             if (life.expired()) return;
                             if (r) {
                               logHookRun(*r);
                               const std::string ev(hooks::eventName(r->event));
                               for (const auto& x : r->hooks)
                                 publishEvent("agent", "hook.result", ev + "/" + x.name, hookEventDetail(x));
                             }
                             done(std::move(r));
                           });
    };
    h.progress = [this](const std::string& id, std::string msg, std::uint32_t pct) {
      processor->progress(id, std::move(msg), pct);
    };
    h.adopt = [this](const std::string& id) { processor->adopt(id); };
    h.finishAdopted = [this](const std::string& id, v1::CommandReply r) { processor->finishAdopted(id, std::move(r)); };
    if (cfg.update.launcher == "spawn") h.launch = [this] { return spawnUpdater(); };
    if (auto a = dpkgArch()) h.arch = *a;
    return h;
  }

  static std::optional<std::string> dpkgArch() {
    // The node's dpkg architecture as the package names it (amd64, arm64).
    utsname u{};
    if (::uname(&u) != 0) return std::nullopt;
    std::string m = u.machine;
    if (m == "x86_64") return "amd64";
    if (m == "aarch64") return "arm64";
    return std::nullopt;
  }

  // launcher = "spawn": `outrider-agent update-apply` detached in its own session (it outlives the agent,
  // which it restarts), output appended to DIR/updater.log.
  Status spawnUpdater() {
    char self[PATH_MAX] = {};
    ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return errnoError("readlink /proc/self/exe", errno);
    auto log = (cfg.update.dir / "updater.log").string();
    auto config = cfg.configFile.string();
    pid_t pid = ::fork();
    if (pid < 0) return errnoError("fork", errno);
    if (pid == 0) {
      ::setsid();
      if (::fork() != 0) ::_exit(0);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      int nul = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      if (nul >= 0) ::dup2(nul, 0);
      for (int i = 3; i < 1024; ++i) ::close(i);
      const char* argv[] = {self, "update-apply", "--config", config.c_str(), nullptr};
      ::execv(self, const_cast<char* const*>(argv));
      ::_exit(127);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return Error{"the updater could not be started"};
    return {};
  }

  // Expired entries are forgotten either way; a failed compaction only leaves the file longer.
  void pruneJournal() {
    if (auto s = journal->prune(clock.nowMs(), cfg.limits.clockSkewMs); !s)
      LOG_WARN("command journal: compaction failed: {}, ignoring", s.error().message);
  }

  void armHousekeeping() {
    housekeeping.expires_after(std::chrono::minutes(1));
    housekeeping.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      pruneJournal();
      armHousekeeping();
    });
  }

  void startTelemetry() {
    telemetry = std::make_unique<TelemetryService>(io, cfg.nodeId, cfg.telemetry, sink, clock);
    telemetry->addSource(makeVmmSource(*monitor));
    telemetry->addSource(makeNetdSource(*monitor));
    telemetry->addSource(makeAgentSource([this] {
      std::vector<Sample> out;
      auto add = [&](const char* field, double v) {
        out.push_back(Sample{outrider::v1::TELEMETRY_STREAM_AGENT, "agent", {}, field, v});
      };
      if (processor) {
        const auto& c = processor->counters();
        add("commands_in_flight", static_cast<double>(processor->inFlight()));
        add("commands_received", static_cast<double>(c.received));
        add("commands_rejected", static_cast<double>(c.rejected));
        add("commands_failed", static_cast<double>(c.failed));
      }
      if (telemetry) {
        auto t = telemetry->counters();
        add("telemetry_series", static_cast<double>(t.seriesActive));
        add("telemetry_publish_failures", static_cast<double>(t.publishFailures));
      }
      add("hub_connects", hub ? static_cast<double>(hub->connects()) : 0);
      return out;
    }));
    // Telemetry is not worth refusing commands over: without it the agent serves on and says why.
    if (auto s = telemetry->start(); !s) {
      telemetryProblem = s.error().message;
      LOG_ERR("telemetry: {}; running without telemetry", s.error().message);
      telemetry.reset();
    }
  }

  Status start() {
    if (auto s = makeDirs(cfg.stateDir, 0750); !s) return s;
    auto j = CommandJournal::open(cfg.stateDir / "commands.journal", JournalOptions{.maxEntries = cfg.journalMaxEntries});
    if (!j) return Error{"command journal: " + j.error().message};
    journal.emplace(std::move(*j));
    if (const auto& rec = journal->recovery(); !rec.clean())
      LOG_WARN("command journal: recovered {} records, cut {} bytes: {}", rec.records, rec.droppedBytes, rec.reason);
    for (const auto& id : journal->recovery().interrupted)
      LOG_WARN("command {}: interrupted by the previous run; a redelivery gets a failed reply", id);
    pruneJournal();

    auto keys = parseOperatorKeys(cfg.operatorKeys);
    if (!keys) return keys.error();
    for (const auto& [id, key] : *keys) LOG_INFO("trusting operator key {}", id);
    verifier = std::make_unique<CommandVerifier>(cfg.nodeId, std::move(*keys), cfg.limits, clock);
    processor = std::make_unique<CommandProcessor>(
        io, cfg.nodeId, *verifier, *journal, clock, cfg.processor,
        [this](const outrider::v1::CommandReply& r) {
          if (auto s = hub->publish(topics::reply(cfg.nodeId), r.SerializeAsString()); !s)
            LOG_WARN("reply to {} not sent: {}; the hub gets it again when it resends the command", r.command_id(),
                     s.error().message);
        },
        [this] { return status(true); },
        [this](const std::string& id, const Command& cmd, CommandProcessor::DoneFn done) {
          if (const auto* h = std::get_if<HookCommand>(&cmd)) return runHooks(*h, std::move(done));
          if (const auto* u = std::get_if<UpdateCommand>(&cmd))
            return updates->run(id, u->op, std::move(done), u->signedCommand);
          workloads->run(cmd, std::move(done));
        });
    hookRunner = std::make_unique<hooks::HookRunner>(
        hooks::RunnerOptions{.hooksDir = cfg.hooksDir, .node = cfg.nodeId, .timeout = cfg.hookTimeout});

    hub = std::make_unique<HubSession>(
        io, cfg.nodeId, cfg.hub,
        HubSession::Handlers{
            .message =
                [this](const std::string& topic, std::string payload) {
                  if (topic == topics::cmd(cfg.nodeId)) processor->handle(payload);
                },
            .onlineStatus = [this] { return status(true).SerializeAsString(); },
            .offlineStatus = [this] { return status(false).SerializeAsString(); },
            .connected =
                [this] {
                  if (telemetry) telemetry->notifyOnline();
                },
        });
    monitor = std::make_unique<DaemonMonitor>(
        io, std::vector<DaemonMonitor::Target>{{"vmm", cfg.vmmSocket}, {"netd", cfg.netdSocket}}, cfg.healthInterval,
        [this](const DaemonHealth& h) {
          workloads->daemonChanged(h);
          hub->refreshStatus();
          publishEvent("agent", "daemon.health", h.name(), DaemonHealth::State_Name(h.state()) + ": " + h.detail());
        },
        [this](const std::string& daemon, const outrider::v1::LocalEvent& ev) {
          publishEvent(daemon, ev.kind(), ev.subject(), ev.detail());
        });
    workloads = std::make_unique<Workloads>(
        io, *monitor,
        WorkloadOptions{.stateDir = cfg.stateDir, .resync = cfg.resyncInterval},
        [this] { hub->refreshStatus(); });
    if (auto s = workloads->load(); !s) return s;
    updates = std::make_unique<UpdateService>(io, cfg.update, updateHost());
    bootCheck = std::make_unique<BootCheck>(io, cfg.boot, updateHost(),
                                            [this](const std::string& kind, const std::string& subject,
                                                   const std::string& detail) {
                                              publishEvent("agent", kind, subject, detail);
                                            });
    if (cfg.telemetry.enabled) startTelemetry();
    monitor->start();
    workloads->start();
    updates->start();
    bootCheck->start();
    hub->start();
    armHousekeeping();
    LOG_INFO("node {}: {} broker(s), first {}", cfg.nodeId, cfg.hub.brokers.size(), cfg.hub.brokers.front().text());
    return {};
  }
};

Agent::Agent(asio::io_context& io, AgentConfig cfg, const Clock& clock)
    : impl_(std::make_unique<Impl>(io, std::move(cfg), clock)) {}
Agent::~Agent() = default;

Status Agent::start() { return impl_->start(); }

void Agent::stop(std::function<void()> done) {
  impl_->housekeeping.cancel();
  if (impl_->hookRunner) impl_->hookRunner->stop();
  if (impl_->telemetry) impl_->telemetry->stop();
  if (impl_->updates) impl_->updates->stop();
  if (impl_->bootCheck) impl_->bootCheck->stop();
  if (impl_->workloads) impl_->workloads->stop();
  if (impl_->monitor) impl_->monitor->stop();
  if (!impl_->hub) return done();
  impl_->hub->stop(std::move(done));
}

NodeStatus Agent::status(bool online) const { return impl_->status(online); }

}  // namespace outrider::agent
