#pragma once
// `outrider-agent provision --from DIR`: zero-touch provisioning from a mounted stick (docs/provisioning.md).
// A separate short-lived process (a oneshot unit started by udev), sharing the agent's state_dir. It
// verifies the bundle, enrolls over MQTT with the one-time token, and writes the node's identity, first
// manifest and, last, STATE_DIR/provisioned.toml, which the waiting agent picks up.
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "outrider/common/broker_url.hpp"
#include "outrider/common/result.hpp"

namespace outrider::agent::provision {

/// `outrider-agent provision ...` (argv[0] is "provision"); returns the exit status: 0 provisioned or
/// already provisioned from this bundle, 1 refused or failed (nothing written), 2 usage or configuration.
int runProvision(int argc, char** argv);

struct EnrollParams {
  std::string nodeId;
  std::vector<BrokerUrl> brokers;    // the enrollment listeners, tried in turn
  std::filesystem::path cafile;      // the bundle's CA, for the brokers' server certificates
  std::string token;                 // the one-time token (never sent)
  std::string bundleId;
  std::string csrDer;
  std::string wireguardPublicKey;    // optional
  std::chrono::milliseconds connectTimeout{std::chrono::seconds(10)};
  std::chrono::milliseconds answerTimeout{std::chrono::seconds(15)};  // per attempt, after the request is out
  std::chrono::milliseconds backoffInitial{500};
  std::chrono::milliseconds backoffMax{std::chrono::seconds(30)};
  std::chrono::steady_clock::time_point giveUpAt;  // no answer by then: kEnrollGaveUp
  /// Checks an issued certificate (PEM); a refusal ends enrollment with kEnrollBadCertificate.
  std::function<Status(const std::string& certPem)> acceptCertificate;
};

enum EnrollErrc : int {
  kEnrollRefused = 1,         // the hub said no (reused or unknown token, bad CSR, ...)
  kEnrollGaveUp = 2,          // no answer before giveUpAt
  kEnrollBadCertificate = 3,  // the hub answered with a certificate that does not check
};

/// Enroll over MQTT (outrider/v1/enroll/{node}/req and /resp): connect anonymously over server-auth TLS,
/// send the request with the token proof, wait for the answer; with no broker or no answer, back off and
/// try the next broker, until giveUpAt. Runs `io` until done; returns the certificate PEM.
Result<std::string> enroll(boost::asio::io_context& io, const EnrollParams& p);

}  // namespace outrider::agent::provision
