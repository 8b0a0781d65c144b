// Credentials that rotate while the server runs (docs/deployment.md, "Certificate and token
// rotation"): nothing restarts when cert-manager renews a certificate or a token Secret
// changes.
//
//   TLS      TlsFiles: every --credentials-refresh-seconds the configured files are re-read;
//            a changed set that is valid (the key is the certificate's, the CA parses) is
//            copied into a private staging folder by an atomic symlink swap, and gRPC's
//            FileWatcherCertificateProvider, which watches that copy, serves it to new
//            handshakes (open connections keep theirs). An invalid set is refused: the copy,
//            and so what clients get, stays as it was (gRPC 1.51 itself would serve a key that
//            is not the certificate's and fail every handshake).
//   Tokens   AuthTokens: the bearer tokens of ATMAN_AUTH_TOKENS (fixed) and of
//            --auth-tokens-file, which a thread re-reads every --credentials-refresh-seconds.
//            A changed file that holds a token replaces the file's tokens; one that cannot be
//            read or holds none keeps the previous tokens (auth never turns off), and is
//            logged and counted once per change.
//
// Ownership: TlsFiles and AuthTokens own their watch threads (RefreshLoop, joined by the
// destructors);
// TlsFiles owns its staging folder (removed by the destructor). Thread safety: Allows, Refresh
// and the accessors may be called from any thread.
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

// One thread that calls a function every `interval` until Stop() (or destruction): the watch
// thread of TlsFiles and AuthTokens. Start and Stop are called by the owner, not concurrently.
class RefreshLoop {
 public:
  RefreshLoop() = default;
  ~RefreshLoop() { Stop(); }
  RefreshLoop(const RefreshLoop&) = delete;
  RefreshLoop& operator=(const RefreshLoop&) = delete;

  bool running() const { return thread_.joinable(); }
  // Starts the thread; the first call of `refresh` comes one `interval` after. No-op when
  // running.
  void Start(std::chrono::seconds interval, std::function<void()> refresh);
  // Wakes the thread and joins it (a call in progress finishes first).
  void Stop();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// The TLS files gRPC serves. gRPC's FileWatcherCertificateProvider reloads whatever pair its
// files hold, and gRPC 1.51 takes a key that is not the certificate's too (then every
// handshake fails). So it does not watch --tls-cert/--tls-key/--tls-client-ca themselves but a
// private copy ("the staged files", in a fresh folder under --credentials-staging-dir, 0700,
// files 0600): Refresh() re-reads the configured files and, when they changed and the new set
// is valid (a certificate, the key that belongs to it, a CA that parses), replaces the copy by
// an atomic symlink swap; an invalid set leaves the copy, and so what new handshakes get, as it
// was, reported once per change. Without --tls-cert, insecure credentials and nothing staged.
class TlsFiles {
 public:
  struct Observer {
    std::function<void()> on_reload;                   // a new set is staged
    std::function<void(const absl::Status&)> on_error;  // a changed set was refused
  };
  // INVALID_ARGUMENT naming the flag when a file is unreadable or empty, or the key is not the
  // certificate's; INTERNAL when the staging folder cannot be written. No thread runs until
  // Watch().
  static absl::StatusOr<std::unique_ptr<TlsFiles>> Create(const Config& config,
                                                          Observer observer = {});
  ~TlsFiles();  // stops the watch, removes the staging folder
  TlsFiles(const TlsFiles&) = delete;
  TlsFiles& operator=(const TlsFiles&) = delete;

  // For the listening port: TLS (mutual with a client CA) over the staged files, which gRPC
  // re-reads every credentials_refresh_seconds; insecure without TLS.
  std::shared_ptr<grpc::ServerCredentials> credentials() const { return credentials_; }
  // The staged certificate (what new handshakes present); empty without TLS.
  std::string served_certificate_path() const;

  absl::Status Refresh();
  void Watch(std::chrono::seconds interval);  // Refresh() every `interval` on a thread

 private:
  TlsFiles() = default;
  absl::Status Stage(const std::string& cert, const std::string& key, const std::string& ca);

  Config config_;
  Observer observer_;
  std::string dir_;  // the staging folder; empty without TLS
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  std::mutex mu_;
  int version_ = 0;
  std::optional<std::string> last_;  // the configured files' texts last looked at, joined

  RefreshLoop watcher_;
};

// The end of the validity (notAfter) of the first certificate in the PEM file at `path`, in
// seconds since the Unix epoch: what atman_tls_certificate_expiry_timestamp_seconds reports for
// the served certificate, read again at every scrape, so a certificate whose renewal never
// arrives raises an alert before it expires. INVALID_ARGUMENT naming `path` when it holds no readable certificate.
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

  RefreshLoop watcher_;
};

}  // namespace atman::server
