#pragma once
// The container component's state and reconcile loop. It owns the desired set (persisted atomically,
// with imperative start/stop overrides), one bundle per container, and drives the runtime toward the
// desired state on apply, on exits, on a timer and at start-up (adopting containers that kept running
// while vmm was down). All of it runs on the daemon's io_context; image imports run on a worker thread
// and post their result back.
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "outrider/common/local_service.hpp"
#include "outrider/v1/local.pb.h"
#include "outrider/vmm/cgroup_stats.hpp"
#include "outrider/vmm/crun_runtime.hpp"
#include "outrider/vmm/ct_spec.hpp"
#include "outrider/vmm/image_store.hpp"

namespace outrider::vmm {

class ContainerManager : public std::enable_shared_from_this<ContainerManager> {
 public:
  /// Receives ("ct.state" events') subject and detail.
  using Publish = std::function<void(const std::string& name, const std::string& detail)>;

  ContainerManager(boost::asio::io_context& io, CtSettings settings, std::shared_ptr<ContainerRuntime> runtime,
                   Publish publish, unsigned hostCpus);
  ~ContainerManager();

  /// Load the desired state, adopt what runs, reconcile, and arm the timers (call once, on the loop).
  void start();
  /// Stop timers and watches (the containers keep running).
  void shutdown();

  v1::LocalReply apply(const v1::CtApplyRequest& req);
  v1::LocalReply list(bool withStats);
  v1::LocalReply action(const v1::CtActionRequest& req);
  v1::LocalReply logs(const v1::CtLogsRequest& req);
  /// Replies when the import is done (it runs off the loop).
  void importImage(const v1::ImageImportRequest& req, std::function<void(v1::LocalReply)> done);
  Health health() const;

  /// One reconcile pass (`sweep` also removes runtime containers that are not ours), and one pass over
  /// the supervisors' status files (both also run by timers).
  void reconcile(bool sweep = false);
  void pollStatus();
  /// True while a bundle is being built or an image imported (work on the worker threads).
  bool busy() const;

 private:
  struct Ct;
  Ct& record(const std::string& name);
  std::filesystem::path bundle(const std::string& name) const { return settings_.stateDir / name; }
  std::string cgroupRel(const std::string& name) const { return settings_.cgroupParent + "/" + name; }
  bool desiredRunning(const Ct& c) const;
  bool active(const Ct& c) const;
  void loadDesired();
  Status saveDesired();
  void adopt();
  void reconcileOne(Ct& c);
  void startBuild(Ct& c);
  void finishBuild(const std::string& name, const v1::ContainerSpec& spec, const Status& st);
  void launch(Ct& c);
  void stop(Ct& c, std::uint32_t timeoutS);
  void removeNow(std::string name);  // by value: it erases the record holding the name
  void handleStatus(Ct& c);
  void handleExit(Ct& c, const ShimStatus& s);
  void scheduleRestart(Ct& c);
  void armRestart(Ct& c, std::chrono::milliseconds delay);
  void saveRunState(const Ct& c);
  void setState(Ct& c, const std::string& state);
  void startImport(const std::string& image, const std::filesystem::path& source, const std::string& user,
                   std::function<void(Result<ImageInfoData>)> done);
  void watch(const std::string& name);
  void readInotify();
  void armTick();
  v1::ContainerInfo info(const Ct& c, bool withStats) const;
  std::int64_t nowMs() const;

  boost::asio::io_context& io_;
  CtSettings settings_;
  std::shared_ptr<ContainerRuntime> runtime_;
  Publish publish_;
  unsigned hostCpus_;
  ImageStore images_;
  CgroupMode cgroupMode_;
  std::map<std::string, std::unique_ptr<Ct>> cts_;
  std::uint64_t manifestVersion_ = 0;
  std::string savedDesired_, savedOverrides_;  // what the files hold, to skip rewriting unchanged ones
  std::set<std::string> importing_;  // image names
  std::map<std::string, std::string> importErrors_;  // image -> last error
  boost::asio::thread_pool pool_{2};
  boost::asio::steady_timer tick_;
  std::chrono::steady_clock::time_point lastReconcile_{};
  std::unique_ptr<boost::asio::posix::stream_descriptor> inotify_;
  std::map<int, std::string> watches_;
  char inotifyBuf_[4096];
  bool stopped_ = false;
};

}  // namespace outrider::vmm
