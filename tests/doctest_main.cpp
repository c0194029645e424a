// Every test binary's main: doctest's, plus one rule. ctest runs each discovered test case by
// name (--test-case=NAME); a name that matches nothing would run nothing and pass (CMake cut
// discovered names at ';', so four cases never ran). A run filtered by name that starts no
// test case fails here instead.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <string_view>

namespace {

int started = 0;

struct start_counter : doctest::IReporter {
  explicit start_counter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override { ++started; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

REGISTER_LISTENER("strata_started", 1, start_counter);

int main(int argc, char** argv) {
  doctest::Context ctx(argc, argv);
  const int rc = ctx.run();
  if (ctx.shouldExit()) return rc;
  bool by_name = false, query = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    by_name |= a.rfind("--test-case=", 0) == 0 || a.rfind("-tc=", 0) == 0;
    query |= a.find("list") != a.npos || a.find("count") != a.npos || a.rfind("-ltc", 0) == 0 ||
             a.rfind("-lts", 0) == 0 || a.rfind("-c", 0) == 0 || a.rfind("-h", 0) == 0 || a.rfind("-v", 0) == 0;
  }
  if (by_name && !query && started == 0) {
    std::fprintf(stderr, "no test case matches the name given (a ';' or ',' in a TEST_CASE name cuts it)\n");
    return rc ? rc : 1;
  }
  return rc;
}
