// The control plane's certificates: made by init-certs, checked before CAF's OpenSSL module
// sees them (a bad file there is an exception on CAF's I/O thread, not a message).
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "../test_util.hpp"
#include "dataflow/files.hpp"
#include "transport/tls.hpp"

using namespace strata;
namespace fs = std::filesystem;

TEST_CASE("tls: init-certs makes a CA and members that verify, keys are private, a rerun adds only new names") {
  test::temp_dir d;
  auto dir = d / "certs";
  auto made = tls::make_certs(dir, {"src", "a"});
  REQUIRE_MESSAGE(made, made.message());
  CHECK(*made == std::vector<std::string>{"src", "a"});
  for (auto n : {"src", "a"}) {
    auto id = tls::load_identity(dir, n);
    REQUIRE_MESSAGE(id, id.message());
    CHECK(id->cert_file == dir + "/" + n + ".pem");
    struct stat st {};
    REQUIRE(::stat(id->key_file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
  }
  struct stat st {};
  REQUIRE(::stat((dir + "/ca.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto ca_before = read_file(dir + "/ca.pem", 1 << 20, "ca");
  auto again = tls::make_certs(dir, {"a", "b"});
  REQUIRE_MESSAGE(again, again.message());
  CHECK(*again == std::vector<std::string>{"b"});
  CHECK(*read_file(dir + "/ca.pem", 1 << 20, "ca") == *ca_before);
  auto b = tls::load_identity(dir, "b");
  CHECK_MESSAGE(b, b.message());
}

TEST_CASE("tls: a member's files that do not fit are refused with the file and the reason") {
  test::temp_dir d;
  auto one = d / "one", two = d / "two";
  REQUIRE(tls::make_certs(one, {"a", "b"}));
  REQUIRE(tls::make_certs(two, {"a"}));
  SUBCASE("no certificate for the name") {
    auto id = tls::load_identity(one, "zed");
    REQUIRE(!id);
    CHECK(id.message().find("no certificate for 'zed'") != std::string::npos);
    CHECK(id.message().find("init-certs") != std::string::npos);
  }
  SUBCASE("a certificate another cluster's CA signed") {
    fs::copy_file(two + "/a.pem", one + "/a.pem", fs::copy_options::overwrite_existing);
    fs::copy_file(two + "/a.key", one + "/a.key", fs::copy_options::overwrite_existing);
    auto id = tls::load_identity(one, "a");
    REQUIRE(!id);
    CHECK(id.message().find("does not verify against") != std::string::npos);
  }
  SUBCASE("the key of another member") {
    fs::copy_file(one + "/b.key", one + "/a.key", fs::copy_options::overwrite_existing);
    auto id = tls::load_identity(one, "a");
    REQUIRE(!id);
    CHECK(id.message().find("is not the key of") != std::string::npos);
  }
  SUBCASE("garbage, an empty file, a FIFO") {
    std::ofstream(one + "/a.pem") << "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
    auto id = tls::load_identity(one, "a");
    REQUIRE(!id);
    CHECK(id.message().find("not a PEM certificate") != std::string::npos);
    std::ofstream(one + "/b.key", std::ios::trunc).close();
    CHECK(tls::load_identity(one, "b").message().find("not an unencrypted PEM private key") != std::string::npos);
    fs::remove(one + "/ca.pem");
    REQUIRE(::mkfifo((one + "/ca.pem").c_str(), 0600) == 0);
    CHECK(tls::load_identity(one, "b").message().find("not a regular file") != std::string::npos);
  }
  SUBCASE("names that would escape the directory") {
    for (auto n : {"../a", "", "ca", ".hidden", "a/b"}) {
      CHECK(!tls::load_identity(one, n));
      CHECK(!tls::make_certs(one, {n}));
    }
  }
}

TEST_CASE("confine_path: only paths under a root, after symlinks and '..'") {
  test::temp_dir d;
  fs::create_directories(d / "models/m1");
  fs::create_directories(d / "secret");
  fs::create_directories(d / "models2");
  std::ofstream(d / "secret/key") << "x";
  fs::create_symlink(d / "secret", d / "models/link");
  std::vector<std::string> roots = {d / "models"};
  auto ok = confine_path(d / "models/m1", roots);
  REQUIRE_MESSAGE(ok, ok.message());
  CHECK(*ok == fs::canonical(d / "models/m1").string());
  CHECK(!confine_path(d / "models/../secret/key", roots));
  CHECK(!confine_path(d / "models/link/key", roots));
  CHECK(!confine_path(d / "models2", roots));  // a sibling that shares the prefix
  auto no = confine_path(d / "secret/key", roots);
  REQUIRE(!no);
  CHECK(no.message().find("outside the model roots") != std::string::npos);
  CHECK(!confine_path(d / "missing", roots));
  CHECK(confine_path(d / "secret/key", {}).message().find("none configured") != std::string::npos);
}
