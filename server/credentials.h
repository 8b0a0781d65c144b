// Credentials that rotate while the server runs (docs/deployment.md, "Certificate and token
// rotation"): nothing restarts when cert-manager renews a certificate or a token Secret
// changes.
//
//   TLS      MakeServerCredentials: gRPC TLS server credentials over gRPC's
//            FileWatcherCertificateProvider, which re-reads --tls-key/--tls-cert (and
//            --tls-client-ca) every --credentials-refresh-seconds. New handshakes get the new
//            files; open connections keep the certificate they were set up with. gRPC reads the
//            key and the certificate together and keeps the pair it has when the new files
//            cannot be read; the files must be replaced atomically (a Kubernetes Secret volume's
//            symlink swap is).
//   Tokens   AuthTokens: the bearer tokens of ATMAN_AUTH_TOKENS (fixed) and of
//            --auth-tokens-file, which a thread re-reads every --credentials-refresh-seconds.
//            A changed file that holds a token replaces the file's tokens; one that cannot be
//            read or holds none keeps the previous tokens (auth never turns off), and is
//            logged and counted once per change.
//
// Ownership: AuthTokens owns its watch thread (joined by the destructor). Thread safety:
// AuthTokens::Allows and Refresh may be called from any thread.
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/config.h"

namespace atman::server {

// Insecure credentials without --tls-cert; otherwise TLS (mutual TLS with --tls-client-ca)
// whose files are re-read every config.credentials_refresh_seconds. INVALID_ARGUMENT naming
// the flag when a file is unreadable or empty now, or the key is not the certificate's (the
// server must not start without a working certificate).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const Config& config);

// The end of the validity (notAfter) of the first certificate in the PEM file at `path`, in
// seconds since the Unix epoch: what atman_tls_certificate_expiry_timestamp_seconds reports,
// read again at every scrape, so a certificate whose renewal never arrives raises an alert
// before it expires. INVALID_ARGUMENT naming `path` when it holds no readable certificate.
absl::StatusOr<double> CertificateNotAfter(const std::string& path);

// Whether `presented` equals one of `tokens`, comparing every byte whatever the first
// difference (no timing signal of how much of a token matched).
bool TokenMatches(absl::string_view presented, const std::vector<std::string>& tokens);

class AuthTokens {
 public:
  struct Observer {
    std::function<void(size_t tokens)> on_reload;            // the file's new token count
    std::function<void(const absl::Status&)> on_error;       // a change that was refused
  };

  // The tokens of `config` (auth_tokens: the first auth_env_tokens from the environment, the
  // rest from auth_tokens_file as LoadConfig read it). No thread runs until Watch().
  AuthTokens(const Config& config, Observer observer);
  ~AuthTokens();
  AuthTokens(const AuthTokens&) = delete;
  AuthTokens& operator=(const AuthTokens&) = delete;

  // Whether calls must present a token (set at start; a bad file never turns it off).
  bool enabled() const { return enabled_; }
  // Whether `presented` is one of the tokens now.
  bool Allows(absl::string_view presented) const;

  // Re-reads the tokens file when there is one: unchanged text does nothing; changed text
  // with a token replaces the file's tokens (on_reload); otherwise the tokens stay, and the
  // first refresh that sees this text reports it (on_error, and the returned status).
  absl::Status Refresh();
  // Calls Refresh() every `interval` on a thread, until destruction.
  void Watch(std::chrono::seconds interval);

 private:
  const std::vector<std::string> env_tokens_;
  const std::string file_;
  const bool enabled_;
  const Observer observer_;

  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<std::string>> tokens_;  // env + file, replaced whole
  std::optional<std::string> last_text_;  // the file's text last looked at; nullopt: unreadable

  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool stop_ = false;
  std::thread watcher_;
};

}  // namespace atman::server
