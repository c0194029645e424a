#include "transport/tls.hpp"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cctype>
#include <filesystem>
#include <functional>
#include <memory>
#include <utility>

#include "dataflow/files.hpp"

namespace fs = std::filesystem;

namespace strata::tls {

namespace {

template <class T, void (*F)(T*)>
struct deleter {
  void operator()(T* p) const { F(p); }
};
using x509_ptr = std::unique_ptr<X509, deleter<X509, X509_free>>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, deleter<EVP_PKEY, EVP_PKEY_free>>;
using bio_ptr = std::unique_ptr<BIO, deleter<BIO, BIO_free_all>>;
using store_ptr = std::unique_ptr<X509_STORE, deleter<X509_STORE, X509_STORE_free>>;
using store_ctx_ptr = std::unique_ptr<X509_STORE_CTX, deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;

std::string ssl_error() {
  std::string msg;
  while (auto e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!msg.empty()) msg += "; ";
    msg += buf;
  }
  return msg.empty() ? "unknown OpenSSL error" : msg;
}

// A PEM file read through open_regular's checks (no FIFO, bounded size).
expected<bio_ptr> pem_bio(const std::string& path, const char* what) {
  auto text = read_file(path, 1 << 20, what);
  if (!text) return text.err();
  bio_ptr b(BIO_new(BIO_s_mem()));
  if (!b || BIO_write(b.get(), text->data(), int(text->size())) != int(text->size()))
    return make_error(path + ": " + ssl_error());
  return b;
}

expected<x509_ptr> read_cert(const std::string& path) {
  auto b = pem_bio(path, "certificate");
  if (!b) return b.err();
  x509_ptr c(PEM_read_bio_X509(b->get(), nullptr, nullptr, nullptr));
  if (!c) return make_error(path + ": not a PEM certificate (" + ssl_error() + ")");
  return c;
}

expected<pkey_ptr> read_key(const std::string& path) {
  auto b = pem_bio(path, "private key");
  if (!b) return b.err();
  pkey_ptr k(PEM_read_bio_PrivateKey(b->get(), nullptr, nullptr, nullptr));
  if (!k) return make_error(path + ": not an unencrypted PEM private key (" + ssl_error() + ")");
  return k;
}

status write_pem(const std::string& path, bool secret, const std::function<int(BIO*)>& write) {
  auto tmp = path + ".tmp";
  bio_ptr b(BIO_new_file(tmp.c_str(), "w"));
  if (!b) return make_error(tmp + ": cannot create: " + ssl_error());
  if (secret) ::chmod(tmp.c_str(), 0600);
  if (write(b.get()) != 1 || BIO_flush(b.get()) != 1) return make_error(tmp + ": cannot write: " + ssl_error());
  b.reset();
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return make_error(path + ": " + ec.message());
  return {};
}

status add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (!e) return make_error(std::string("certificate extension ") + value + ": " + ssl_error());
  X509_add_ext(cert, e, -1);
  X509_EXTENSION_free(e);
  return {};
}

// A P-256 key and a certificate for `cn`, signed by (ca, ca_key), or self-signed when ca is null.
expected<std::pair<x509_ptr, pkey_ptr>> make_cert(const std::string& cn, X509* ca, EVP_PKEY* ca_key, int days) {
  pkey_ptr key(EVP_EC_gen("P-256"));
  if (!key) return make_error("cannot make a key: " + ssl_error());
  x509_ptr cert(X509_new());
  uint64_t serial = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&serial), sizeof(serial)) != 1)
    return make_error("no randomness: " + ssl_error());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set_uint64(X509_get_serialNumber(cert.get()), serial >> 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300);  // tolerate clocks a little apart
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), long(days) * 86400);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("strata cluster"), -1,
                             -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                             0);
  X509* issuer = ca ? ca : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer));
  status st;
  if (!ca) {
    if (!(st = add_ext(cert.get(), issuer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0")) ||
        !(st = add_ext(cert.get(), issuer, NID_key_usage, "critical,keyCertSign,cRLSign")))
      return st.err();
  } else if (!(st = add_ext(cert.get(), issuer, NID_basic_constraints, "critical,CA:FALSE")) ||
             !(st = add_ext(cert.get(), issuer, NID_key_usage, "critical,digitalSignature")) ||
             !(st = add_ext(cert.get(), issuer, NID_ext_key_usage, "serverAuth,clientAuth"))) {
    return st.err();
  }
  if (!(st = add_ext(cert.get(), issuer, NID_subject_key_identifier, "hash"))) return st.err();
  if (!X509_sign(cert.get(), ca_key ? ca_key : key.get(), EVP_sha256()))
    return make_error("cannot sign the certificate of " + cn + ": " + ssl_error());
  return std::make_pair(std::move(cert), std::move(key));
}

// Names become file names: keep them to what a node name may be.
bool plain_name(const std::string& n) {
  if (n.empty() || n.size() > 64 || n == "ca") return false;
  for (char c : n)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return n[0] != '.';
}

}  // namespace

expected<identity> load_identity(const std::string& dir, const std::string& name) {
  if (!plain_name(name))
    return make_error("tls: '" + name + "' cannot name a certificate (letters, digits, '-', '_', '.'; not 'ca')");
  identity id{name, (fs::path(dir) / "ca.pem").string(), (fs::path(dir) / (name + ".pem")).string(),
              (fs::path(dir) / (name + ".key")).string()};
  if (!fs::exists(id.cert_file))
    return make_error("tls: no certificate for '" + name + "' in " + dir + " (make one with: strata cluster init-certs " +
                      dir + " --names " + name + ")");
  auto ca = read_cert(id.ca_file);
  if (!ca) return make_error("tls: " + ca.message());
  auto cert = read_cert(id.cert_file);
  if (!cert) return make_error("tls: " + cert.message());
  auto key = read_key(id.key_file);
  if (!key) return make_error("tls: " + key.message());
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return make_error("tls: " + id.key_file + " is not the key of " + id.cert_file);
  }
  store_ptr store(X509_STORE_new());
  store_ctx_ptr ctx(X509_STORE_CTX_new());
  if (!store || !ctx || X509_STORE_add_cert(store.get(), ca->get()) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert->get(), nullptr) != 1)
    return make_error("tls: " + ssl_error());
  X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
  if (X509_verify_cert(ctx.get()) != 1) {
    auto why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()));
    ERR_clear_error();
    return make_error("tls: " + id.cert_file + " does not verify against " + id.ca_file + ": " + why);
  }
  return id;
}

expected<std::vector<std::string>> make_certs(const std::string& dir, const std::vector<std::string>& names,
                                              int days) {
  for (auto& n : names)
    if (!plain_name(n))
      return make_error("init-certs: '" + n + "' cannot name a certificate (letters, digits, '-', '_', '.'; not 'ca')");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(dir + ": " + ec.message());
  auto ca_pem = (fs::path(dir) / "ca.pem").string(), ca_key_file = (fs::path(dir) / "ca.key").string();
  x509_ptr ca;
  pkey_ptr ca_key;
  if (fs::exists(ca_pem)) {
    auto c = read_cert(ca_pem);
    if (!c) return c.err();
    auto k = read_key(ca_key_file);
    if (!k) return make_error(k.message() + " (the CA's key is needed to sign new members)");
    ca = std::move(*c);
    ca_key = std::move(*k);
  } else {
    // A name of its own: a peer of another cluster is then refused as "unable to get local issuer"
    // rather than by a failed signature under a CA of the same name.
    uint32_t tag = 0;
    RAND_bytes(reinterpret_cast<unsigned char*>(&tag), sizeof(tag));
    char cn[64];
    std::snprintf(cn, sizeof(cn), "strata cluster CA %08x", tag);
    auto made = make_cert(cn, nullptr, nullptr, days);
    if (!made) return made.err();
    ca = std::move(made->first);
    ca_key = std::move(made->second);
    status st;
    if (!(st = write_pem(ca_key_file, true,
                         [&](BIO* b) { return PEM_write_bio_PrivateKey(b, ca_key.get(), nullptr, nullptr, 0, nullptr, nullptr); })) ||
        !(st = write_pem(ca_pem, false, [&](BIO* b) { return PEM_write_bio_X509(b, ca.get()); })))
      return st.err();
  }
  std::vector<std::string> made_names;
  for (auto& n : names) {
    auto pem = (fs::path(dir) / (n + ".pem")).string(), key = (fs::path(dir) / (n + ".key")).string();
    if (fs::exists(pem)) continue;
    auto made = make_cert(n, ca.get(), ca_key.get(), days);
    if (!made) return made.err();
    status st;
    if (!(st = write_pem(key, true,
                         [&](BIO* b) {
                           return PEM_write_bio_PrivateKey(b, made->second.get(), nullptr, nullptr, 0, nullptr, nullptr);
                         })) ||
        !(st = write_pem(pem, false, [&](BIO* b) { return PEM_write_bio_X509(b, made->first.get()); })))
      return st.err();
    made_names.push_back(n);
  }
  return made_names;
}

namespace {

std::string peer_of(SSL* ssl) {
  sockaddr_storage sa{};
  socklen_t len = sizeof(sa);
  if (::getpeername(SSL_get_fd(ssl), reinterpret_cast<sockaddr*>(&sa), &len) != 0) return "unknown peer";
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (sa.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (sa.ss_family == AF_INET6) {
    auto* in = reinterpret_cast<sockaddr_in6*>(&sa);
    inet_ntop(AF_INET6, &in->sin6_addr, host, sizeof(host));
    port = ntohs(in->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

std::string subject_cn(X509* cert) {
  char cn[128] = "";
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
  return cn;
}

// A flood of refused connections must not become a flood of log lines: at most 20 a minute.
bool may_log() {
  static std::atomic<int64_t> window{0};
  static std::atomic<int> count{0};
  auto now = std::chrono::duration_cast<std::chrono::minutes>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (window.exchange(now) != now) count = 0;
  int n = ++count;
  if (n == 21) std::fprintf(stderr, "strata: further refused TLS peers this minute are not logged\n");
  return n <= 20;
}

}  // namespace

}  // namespace strata::tls

// Two defects of CAF 0.17's OpenSSL module are mended here by symbol interposition: its calls to
// these OpenSSL functions bind to the definitions below (the executable's symbols come first in
// the dynamic linker's search), which call OpenSSL's own.
// - It never clears OpenSSL's per-thread error queue, which OpenSSL requires before each I/O
//   call: one refused handshake left an error behind that made the next SSL_read of a healthy
//   connection on the same I/O thread fail, so any stranger connecting dropped a member.
// - It has no hook on the handshakes it runs and drops a refused peer without a word: a listener
//   now logs who connected, by address, and the certificate's name or why it was refused.
namespace {

template <class Fn>
Fn real_fn(const char* name) {
  return reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, name));
}

std::string refusal(SSL* ssl) {
  long v = SSL_get_verify_result(ssl);
  if (v != X509_V_OK) return std::string("certificate refused: ") + X509_verify_cert_error_string(v);
  auto e = ERR_peek_error();
  switch (ERR_GET_REASON(e)) {
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
      return "did not speak TLS (a client without --tls?)";
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
      return "presented no certificate";
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
      return "it refused this listener's certificate (a member of another cluster?)";
    default:
      break;
  }
  char buf[256] = "handshake failed";
  if (e) ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

}  // namespace

extern "C" int SSL_accept(SSL* ssl) {
  static auto real = real_fn<int (*)(SSL*)>("SSL_accept");
  thread_local const SSL* last_refused = nullptr;  // CAF calls it again on a failed handshake
  if (!real) return -1;
  ERR_clear_error();
  int r = real(ssl);
  using namespace strata::tls;
  if (r == 1) {
    if (X509* c = SSL_get0_peer_certificate(ssl))
      std::fprintf(stderr, "strata: TLS peer %s authenticated as '%s'\n", peer_of(ssl).c_str(), subject_cn(c).c_str());
  } else if (SSL_get_error(ssl, r) == SSL_ERROR_SSL && std::exchange(last_refused, ssl) != ssl && may_log()) {
    std::fprintf(stderr, "strata: refused TLS peer %s: %s\n", peer_of(ssl).c_str(), refusal(ssl).c_str());
  }
  return r;
}

extern "C" int SSL_connect(SSL* ssl) {
  static auto real = real_fn<int (*)(SSL*)>("SSL_connect");
  if (!real) return -1;
  ERR_clear_error();
  return real(ssl);
}

extern "C" int SSL_read(SSL* ssl, void* buf, int n) {
  static auto real = real_fn<int (*)(SSL*, void*, int)>("SSL_read");
  if (!real) return -1;
  ERR_clear_error();
  return real(ssl, buf, n);
}

extern "C" int SSL_write(SSL* ssl, const void* buf, int n) {
  static auto real = real_fn<int (*)(SSL*, const void*, int)>("SSL_write");
  if (!real) return -1;
  ERR_clear_error();
  return real(ssl, buf, n);
}
