#include "server/credentials.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace atman::server {
namespace {

// The whole file, or nullopt when it cannot be opened or read.
std::optional<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return text.str();
}

absl::Status CheckReadable(const std::string& flag, const std::string& path) {
  const std::optional<std::string> text = ReadText(path);
  if (!text.has_value() || text->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": empty or unreadable"));
  }
  return absl::OkStatus();
}

// A key that does not belong to its certificate would fail every handshake: refused at start
// and on a rotation. `cert_pem`/`key_pem` are the texts of the files at `cert_path`/`key_path`.
absl::Status CheckPair(const std::string& cert_pem, const std::string& key_pem,
                       const std::string& cert_path, const std::string& key_path) {
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())), &BIO_free);
  std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())), &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      cert_bio ? PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr) : nullptr,
      &X509_free);
  if (!cert) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", cert_path, ": holds no PEM certificate"));
  }
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr) : nullptr,
      &EVP_PKEY_free);
  if (!key) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", key_path, ": holds no unencrypted PEM private key"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-key ", key_path,
                                                   ": is not the key of the certificate in "
                                                   "--tls-cert ",
                                                   cert_path));
  }
  return absl::OkStatus();
}

absl::Status CheckCa(const std::string& ca_pem, const std::string& ca_path) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(ca_pem.data(), static_cast<int>(ca_pem.size())), &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> first(
      bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr, &X509_free);
  if (!first) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-client-ca ", ca_path, ": holds no PEM certificate"));
  }
  return absl::OkStatus();
}

std::shared_ptr<const std::vector<std::string>> Join(const std::vector<std::string>& a,
                                                     const std::vector<std::string>& b) {
  auto all = std::make_shared<std::vector<std::string>>(a);
  all->insert(all->end(), b.begin(), b.end());
  return all;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsFiles>> TlsFiles::Create(const Config& config,
                                                          Observer observer) {
  std::unique_ptr<TlsFiles> files(new TlsFiles());
  files->config_ = config;
  files->observer_ = std::move(observer);
  if (config.tls_cert.empty()) {
    files->credentials_ = grpc::InsecureServerCredentials();
    return files;
  }
  if (auto s = CheckReadable("--tls-cert", config.tls_cert); !s.ok()) return s;
  if (auto s = CheckReadable("--tls-key", config.tls_key); !s.ok()) return s;
  if (!config.tls_client_ca.empty()) {
    if (auto s = CheckReadable("--tls-client-ca", config.tls_client_ca); !s.ok()) return s;
  }
  std::string base = config.credentials_staging_dir;
  if (base.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string pattern = base + "/atman-tls-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("--credentials-staging-dir ", base,
                                            ": cannot create a folder: ", std::strerror(errno)));
  }
  files->dir_ = pattern;
  if (auto s = files->Refresh(); !s.ok()) return s;
  const auto interval = static_cast<unsigned int>(
      std::clamp<int64_t>(config.credentials_refresh_seconds, 1, 86400 * 365));
  const std::string current = files->dir_ + "/current/";
  // The provider reads the staged files once now, then every `interval` on its own thread.
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      current + "tls.key", current + "tls.crt",
      config.tls_client_ca.empty() ? std::string() : current + "ca.crt", interval);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (config.tls_client_ca.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  files->credentials_ = grpc::experimental::TlsServerCredentials(options);
  if (files->credentials_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", config.tls_cert, " / --tls-key ", config.tls_key,
                     ": gRPC refused the TLS configuration"));
  }
  return files;
}

TlsFiles::~TlsFiles() {
  watcher_.Stop();
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

std::string TlsFiles::served_certificate_path() const {
  return dir_.empty() ? std::string() : dir_ + "/current/tls.crt";
}

absl::Status TlsFiles::Stage(const std::string& cert, const std::string& key,
                             const std::string& ca) {
  namespace fs = std::filesystem;
  const std::string name = absl::StrCat("v", ++version_);
  const fs::path folder = fs::path(dir_) / name;
  std::error_code error;
  fs::create_directory(folder, error);
  auto write = [&](const char* file, const std::string& text) {
    const fs::path path = folder / file;
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << text;
      if (!out.flush()) return false;
    }
    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write, error);
    return !error;
  };
  if (error || !write("tls.crt", cert) || !write("tls.key", key) ||
      (!ca.empty() && !write("ca.crt", ca))) {
    return absl::InternalError(absl::StrCat("--credentials-staging-dir: cannot write ",
                                            folder.string()));
  }
  // rename(2) over the old link: gRPC sees either the old set or the new one, never a mix.
  const fs::path link = fs::path(dir_) / "current", staged = fs::path(dir_) / "current.new";
  fs::remove(staged, error);
  fs::create_directory_symlink(name, staged, error);
  if (!error) fs::rename(staged, link, error);
  if (error) {
    return absl::InternalError(absl::StrCat("--credentials-staging-dir: cannot switch ",
                                            link.string(), ": ", error.message()));
  }
  // The set before the previous one: no reader can still be on its way to it.
  if (version_ > 2) fs::remove_all(fs::path(dir_) / absl::StrCat("v", version_ - 2), error);
  return absl::OkStatus();
}

absl::Status TlsFiles::Refresh() {
  if (dir_.empty()) return absl::OkStatus();
  const bool mutual = !config_.tls_client_ca.empty();
  const std::optional<std::string> cert = ReadText(config_.tls_cert),
                                   key = ReadText(config_.tls_key),
                                   ca = mutual ? ReadText(config_.tls_client_ca) : std::string();
  absl::Status status;
  bool started = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    started = version_ > 0;
    std::optional<std::string> now;
    if (cert && key && ca) {
      now = absl::StrCat(cert->size(), ":", *cert, key->size(), ":", *key, *ca);
    }
    if (started && now == last_) return absl::OkStatus();
    last_ = now;
    if (!now.has_value()) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "--tls-cert ", config_.tls_cert, " / --tls-key ", config_.tls_key,
          mutual ? absl::StrCat(" / --tls-client-ca ", config_.tls_client_ca) : "",
          ": cannot be read"));
    } else {
      status = CheckPair(*cert, *key, config_.tls_cert, config_.tls_key);
      if (status.ok() && mutual) status = CheckCa(*ca, config_.tls_client_ca);
      if (status.ok()) status = Stage(*cert, *key, *ca);
    }
  }
  if (!started) return status;  // Create() reports it
  if (!status.ok()) {
    if (observer_.on_error) {
      observer_.on_error(absl::Status(
          status.code(),
          absl::StrCat(status.message(), "; new handshakes keep the previous certificate")));
    }
    return status;
  }
  if (observer_.on_reload) observer_.on_reload();
  return absl::OkStatus();
}

void TlsFiles::Watch(std::chrono::seconds interval) {
  if (dir_.empty()) return;
  watcher_.Start(interval, [this] { Refresh().IgnoreError(); });  // reported through the observer
}

void RefreshLoop::Start(std::chrono::seconds interval, std::function<void()> refresh) {
  if (thread_.joinable()) return;
  thread_ = std::thread([this, interval, refresh = std::move(refresh)] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, interval, [this] { return stop_; })) {
      lock.unlock();
      refresh();
      lock.lock();
    }
  });
}

void RefreshLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<double> CertificateNotAfter(const std::string& path) {
  const std::optional<std::string> pem = ReadText(path);
  if (!pem.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-cert ", path, ": cannot be read"));
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())), &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr, &X509_free);
  std::tm tm{};
  if (!cert || ASN1_TIME_to_tm(X509_get0_notAfter(cert.get()), &tm) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", path, ": holds no PEM certificate with a validity"));
  }
  return static_cast<double>(timegm(&tm));
}

bool TokenMatches(absl::string_view presented, const std::vector<std::string>& tokens) {
  bool any = false;
  for (const std::string& token : tokens) {
    // Every byte of the longer string is compared, whatever the first difference.
    const size_t n = std::max(token.size(), presented.size());
    unsigned diff = token.size() == presented.size() ? 0u : 1u;
    for (size_t i = 0; i < n; ++i) {
      const auto a = static_cast<unsigned char>(i < token.size() ? token[i] : 0);
      const auto b = static_cast<unsigned char>(i < presented.size() ? presented[i] : 0);
      diff |= static_cast<unsigned>(a ^ b);
    }
    any |= (diff == 0);
  }
  return any;
}

AuthTokens::AuthTokens(const Config& config, Observer observer)
    : env_tokens_(config.auth_tokens.begin(),
                  config.auth_tokens.begin() +
                      static_cast<std::ptrdiff_t>(
                          std::min(config.auth_env_tokens, config.auth_tokens.size()))),
      file_(config.auth_tokens_file),
      enabled_(!config.auth_tokens.empty()),
      observer_(std::move(observer)),
      tokens_(std::make_shared<const std::vector<std::string>>(config.auth_tokens)) {
  if (file_.empty()) return;
  // The baseline of change detection: the file now. LoadConfig read it moments ago; should it
  // have changed since, the text read here is what counts, if it holds a token.
  last_text_ = ReadText(file_);
  if (last_text_.has_value()) {
    const std::vector<std::string> file_tokens = ParseTokens(*last_text_);
    if (!file_tokens.empty()) tokens_ = Join(env_tokens_, file_tokens);
  }
}

AuthTokens::~AuthTokens() {
  watcher_.Stop();
}

bool AuthTokens::Allows(absl::string_view presented) const {
  std::shared_ptr<const std::vector<std::string>> tokens;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tokens = tokens_;
  }
  return TokenMatches(presented, *tokens);
}

absl::Status AuthTokens::Refresh() {
  if (file_.empty()) return absl::OkStatus();
  const std::optional<std::string> text = ReadText(file_);
  absl::Status refused;
  size_t count = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (text == last_text_) return absl::OkStatus();
    last_text_ = text;
    if (!text.has_value()) {
      refused = absl::InvalidArgumentError(absl::StrCat(
          "--auth-tokens-file ", file_, ": cannot be read; keeping the previous tokens"));
    } else {
      std::vector<std::string> file_tokens = ParseTokens(*text);
      if (file_tokens.empty()) {
        refused = absl::InvalidArgumentError(
            absl::StrCat("--auth-tokens-file ", file_,
                         ": changed but holds no token; keeping the previous tokens"));
      } else {
        count = file_tokens.size();
        tokens_ = Join(env_tokens_, file_tokens);
      }
    }
  }
  if (!refused.ok()) {
    if (observer_.on_error) observer_.on_error(refused);
    return refused;
  }
  if (observer_.on_reload) observer_.on_reload(count);
  return absl::OkStatus();
}

void AuthTokens::Watch(std::chrono::seconds interval) {
  if (file_.empty()) return;
  watcher_.Start(interval, [this] { Refresh().IgnoreError(); });  // reported through the observer
}

}  // namespace atman::server
