#include "runtime/config.hpp"

#include <filesystem>
#include <fstream>

#include "tests/caf_fixture.hpp"

using namespace alephd;
using namespace alephd::test;
using namespace std::chrono_literals;
using std::chrono::milliseconds;

// Named so that the suites can share one unity-built test binary.
namespace config_tests {

namespace {

const std::filesystem::path config_dir =
  std::filesystem::path(__FILE__).parent_path().parent_path() / "config";

struct config_test : ::testing::Test {
  temp_dir dir;
  settings s;
  bool help = true;

  std::string write(const std::string& name, const std::string& text) {
    auto path = (dir.path / name).string();
    std::ofstream out{path};
    out << text;
    return path;
  }

  std::string parse(const std::vector<std::string>& args) {
    s = settings{};
    return parse_settings(args, s, help);
  }

  /// Parses and expects an error: one line, containing every `needle`.
  void expect_error(const std::vector<std::string>& args, const std::vector<std::string>& needles) {
    std::string err;
    try {
      err = parse(args);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "parse_settings threw " << e.what();
      return;
    }
    ASSERT_FALSE(err.empty()) << "accepted: " << testing::PrintToString(args);
    EXPECT_EQ(err.find('\n'), std::string::npos) << "more than one line: " << err;
    for (auto& n : needles)
      EXPECT_NE(err.find(n), std::string::npos) << "'" << n << "' missing from: " << err;
  }
};

TEST_F(config_test, no_arguments_give_the_defaults) {
  ASSERT_EQ(parse({}), "");
  EXPECT_FALSE(help);
  EXPECT_EQ(s.data_dir, "");
  EXPECT_EQ(s.log_level, "info");
  EXPECT_EQ(s.threads, 2u);
  EXPECT_EQ(s.http_host, "127.0.0.1");
  EXPECT_EQ(s.http_port, -1);
  EXPECT_EQ(s.http_threads, 1u);
  EXPECT_EQ(s.node_host, "127.0.0.1");
  EXPECT_EQ(s.node_port, -1);
  EXPECT_EQ(s.max_linked_crns, 3u);
  EXPECT_EQ(s.heartbeat_interval, 1000ms);
  EXPECT_EQ(s.failure_timeout, 5000ms);
  EXPECT_TRUE(s.peers.empty());
  EXPECT_EQ(s.max_file_size, 104857600u);
  EXPECT_TRUE(s.group_commit);
  EXPECT_TRUE(s.ccn.empty());
  EXPECT_EQ(s.vcpus, 0u);
  EXPECT_EQ(s.memory_mib, 0u);
  EXPECT_EQ(s.port_base, 4020u);
  EXPECT_EQ(s.dev_crns, 3u);
}

TEST_F(config_test, help_is_recognized_and_the_help_text_lists_options) {
  ASSERT_EQ(parse({"--help"}), "");
  EXPECT_TRUE(help);
  ASSERT_EQ(parse({"-h"}), "");
  EXPECT_TRUE(help);
  auto text = settings_help();
  for (auto opt : {"--global.data-dir", "--data-dir", "--http.port", "--ccn.max-linked-crns",
                   "--crn.ccn", "--dev.port-base"})
    EXPECT_NE(text.find(opt), std::string::npos) << opt;
}

TEST_F(config_test, an_ini_file_sets_every_group) {
  auto path = write("all.ini", R"(; a comment
# another comment
[global]
data-dir = /tmp/x
name = "my node"
log-level = debug
threads = 4

[http]
host = 0.0.0.0
port = 8080 ; trailing comment
threads = 3

[node]
host = 10.0.0.1
port = 9000

[ccn]
max-linked-crns = 5
heartbeat-interval = 250ms
failure-timeout = 2s
peers = a.example:4025, b.example:4026
max-file-size = 1024
group-commit = false

[crn]
ccn = c.example:4025
vcpus = 8
memory-mib = 4096
public-address = https://crn.example.org

[dev]
port-base = 5000
crns = 2
)");
  ASSERT_EQ(parse({"--config", path}), "");
  EXPECT_EQ(s.data_dir, "/tmp/x");
  EXPECT_EQ(s.name, "my node");
  EXPECT_EQ(s.log_level, "debug");
  EXPECT_EQ(s.threads, 4u);
  EXPECT_EQ(s.http_host, "0.0.0.0");
  EXPECT_EQ(s.http_port, 8080);
  EXPECT_EQ(s.http_threads, 3u);
  EXPECT_EQ(s.node_host, "10.0.0.1");
  EXPECT_EQ(s.node_port, 9000);
  EXPECT_EQ(s.max_linked_crns, 5u);
  EXPECT_EQ(s.heartbeat_interval, 250ms);
  EXPECT_EQ(s.failure_timeout, 2000ms);
  EXPECT_EQ(s.peers, (std::vector<std::string>{"a.example:4025", "b.example:4026"}));
  EXPECT_EQ(s.max_file_size, 1024u);
  EXPECT_FALSE(s.group_commit);
  EXPECT_EQ(s.ccn, std::vector<std::string>{"c.example:4025"});
  EXPECT_EQ(s.vcpus, 8u);
  EXPECT_EQ(s.memory_mib, 4096u);
  EXPECT_EQ(s.public_address, "https://crn.example.org");
  EXPECT_EQ(s.port_base, 5000u);
  EXPECT_EQ(s.dev_crns, 2u);
}

TEST_F(config_test, every_config_flag_form_reads_the_file) {
  auto path = write("a.ini", "[http]\nport = 1234\n");
  for (std::vector<std::string> args : {std::vector<std::string>{"--config", path},
                                        {"--config=" + path},
                                        {"--config-file", path},
                                        {"--config-file=" + path}}) {
    ASSERT_EQ(parse(args), "") << args[0];
    EXPECT_EQ(s.http_port, 1234) << args[0];
  }
}

TEST_F(config_test, the_command_line_overrides_the_file_in_any_order) {
  auto path = write("a.ini", "[http]\nport = 1234\n[ccn]\nmax-linked-crns = 7\n");
  ASSERT_EQ(parse({"--http.port=1111", "--config", path}), "");
  EXPECT_EQ(s.http_port, 1111);
  EXPECT_EQ(s.max_linked_crns, 7u);
  ASSERT_EQ(parse({"--config", path, "--http.port=2222"}), "");
  EXPECT_EQ(s.http_port, 2222);
  EXPECT_EQ(s.max_linked_crns, 7u);
  ASSERT_EQ(parse({"--port", "3333", "--config=" + path}), "");
  EXPECT_EQ(s.http_port, 3333);
}

TEST_F(config_test, a_list_on_the_command_line_replaces_the_files_list) {
  // BUG runtime/config.cpp:160 (read_ini) + :102 (endpoints): list options append, and the
  // `reset` map meant to make a file's list replace the default is never used. So
  auto path = write("crn.ini", "[crn]\nccn = 127.0.0.1:4025\n");
  ASSERT_EQ(parse({"--config", path, "--ccn", "10.0.0.5:4025", "--ccn", "10.0.0.6:4025"}), "");
  EXPECT_EQ(s.ccn, (std::vector<std::string>{"10.0.0.5:4025", "10.0.0.6:4025"}));
}

TEST_F(config_test, both_value_forms_work) {
  ASSERT_EQ(parse({"--ccn.max-linked-crns", "9", "--ccn.failure-timeout=3s"}), "");
  EXPECT_EQ(s.max_linked_crns, 9u);
  EXPECT_EQ(s.failure_timeout, 3000ms);
  ASSERT_EQ(parse({"--global.name=a=b"}), "");
  EXPECT_EQ(s.name, "a=b") << "only the first '=' separates the value";
  ASSERT_EQ(parse({"--global.name="}), "");
  EXPECT_EQ(s.name, "");
}

TEST_F(config_test, shorthands) {
  ASSERT_EQ(parse({"--data-dir", "/d", "--port=81", "--node-port", "82", "--name", "n",
                   "--log-level=warn", "--threads", "3", "--port-base", "6000", "--crns=4"}),
            "");
  EXPECT_EQ(s.data_dir, "/d");
  EXPECT_EQ(s.http_port, 81);
  EXPECT_EQ(s.node_port, 82);
  EXPECT_EQ(s.name, "n");
  EXPECT_EQ(s.log_level, "warn");
  EXPECT_EQ(s.threads, 3u);
  EXPECT_EQ(s.port_base, 6000u);
  EXPECT_EQ(s.dev_crns, 4u);
}

TEST_F(config_test, repeated_endpoint_flags_append_in_order) {
  ASSERT_EQ(parse({"--peer", "a:1", "--peer=b:2,c:3", "--ccn", "x:10", "--crn.ccn=y:11"}), "");
  EXPECT_EQ(s.peers, (std::vector<std::string>{"a:1", "b:2", "c:3"}));
  EXPECT_EQ(s.ccn, (std::vector<std::string>{"x:10", "y:11"}));
}

TEST_F(config_test, port_zero_means_any_free_port) {
  ASSERT_EQ(parse({"--port=0", "--node-port=0"}), "");
  EXPECT_EQ(s.http_port, 0);
  EXPECT_EQ(s.node_port, 0);
}

// -- errors: one line, naming the option ---------------------------------------------------

TEST_F(config_test, unknown_option) {
  expect_error({"--bogus=1"}, {"--bogus"});
  expect_error({"--http.bogus", "1"}, {"--http.bogus"});
  expect_error({"--port-base-x=1"}, {"--port-base-x"});
}

TEST_F(config_test, a_bare_argument_is_an_error) {
  expect_error({"4024"}, {"4024"});
  expect_error({"-p", "4024"}, {"-p"});
}

TEST_F(config_test, unknown_ini_key_names_file_and_line) {
  auto path = write("bad.ini", "[ccn]\nmax-linked-crns = 3\nbogus = 1\n");
  expect_error({"--config", path}, {path + ":3", "ccn.bogus"});
  auto global = write("global.ini", "bogus = 1\n");
  expect_error({"--config", global}, {global + ":1", "global.bogus"});
}

TEST_F(config_test, bad_integer) {
  expect_error({"--http.port=abc"}, {"http.port", "abc"});
  expect_error({"--threads", "1.5"}, {"global.threads"});
  expect_error({"--threads", ""}, {"global.threads"});
  expect_error({"--threads=0"}, {"global.threads"});
  expect_error({"--ccn.max-linked-crns=1-2"}, {"ccn.max-linked-crns"});
  expect_error({"--crn.vcpus=99999999999999999999999"}, {"crn.vcpus"});
  auto path = write("int.ini", "[http]\nport = eighty\n");
  expect_error({"--config", path}, {path + ":2", "http.port", "eighty"});
}

TEST_F(config_test, a_lone_minus_is_a_bad_integer) {
  // "-" alone once reached std::stoll and threw; it must be a one-line error.
  expect_error({"--port=-"}, {"http.port"});
  expect_error({"--threads", "-"}, {"global.threads"});
}

TEST_F(config_test, out_of_range_port) {
  expect_error({"--http.port=70000"}, {"http.port", "70000", "65535"});
  expect_error({"--node-port", "65536"}, {"node.port"});
  expect_error({"--port=-1"}, {"http.port"});
  ASSERT_EQ(parse({"--port=65535"}), "");
  EXPECT_EQ(s.http_port, 65535);
}

TEST_F(config_test, bad_duration) {
  expect_error({"--ccn.heartbeat-interval=5h"}, {"ccn.heartbeat-interval", "5h"});
  expect_error({"--ccn.failure-timeout", "soon"}, {"ccn.failure-timeout"});
  expect_error({"--ccn.failure-timeout=0s"}, {"ccn.failure-timeout"});
  expect_error({"--ccn.failure-timeout=-1s"}, {"ccn.failure-timeout"});
}

TEST_F(config_test, bad_endpoint) {
  expect_error({"--ccn", "localhost"}, {"crn.ccn", "localhost"});
  expect_error({"--peer=host:99999"}, {"ccn.peers", "host:99999"});
  expect_error({"--peer=:4025"}, {"ccn.peers"});
  expect_error({"--peer=host:"}, {"ccn.peers"});
  expect_error({"--peer=host:0"}, {"ccn.peers"});
  expect_error({"--ccn=a:1,b"}, {"crn.ccn", "'b'"});
  // Nothing of a rejected list is kept.
  EXPECT_TRUE(s.ccn.empty());
}

TEST_F(config_test, bad_boolean_and_enum) {
  expect_error({"--ccn.group-commit=maybe"}, {"ccn.group-commit"});
  expect_error({"--log-level=verbose"}, {"global.log-level"});
}

TEST_F(config_test, empty_data_dir_is_refused) {
  expect_error({"--data-dir="}, {"global.data-dir"});
}

TEST_F(config_test, missing_value) {
  expect_error({"--http.port"}, {"--http.port", "value"});
  expect_error({"--config"}, {"--config"});
  expect_error({"--config-file"}, {"--config-file"});
}

TEST_F(config_test, unreadable_config_file) {
  auto missing = (dir.path / "nope.ini").string();
  expect_error({"--config", missing}, {missing});
}

TEST_F(config_test, a_directory_is_not_a_config_file) {
  expect_error({"--config", dir.str()}, {dir.str()});
}

TEST_F(config_test, malformed_section_header) {
  auto a = write("a.ini", "[http]\nport = 1\n[ccn\n");
  expect_error({"--config", a}, {a + ":3", "section"});
  auto b = write("b.ini", "[]\n");
  expect_error({"--config", b}, {b + ":1"});
}

TEST_F(config_test, a_line_without_equals_sign) {
  auto a = write("a.ini", "[http]\nport 4024\n");
  expect_error({"--config", a}, {a + ":2"});
}

TEST_F(config_test, a_value_with_a_newline_still_gives_a_one_line_error) {
  expect_error({"--http.port=1\n2"}, {"http.port"});
}

// -- parse_duration -----------------------------------------------------------------------

TEST(parse_duration, units_and_plain_milliseconds) {
  milliseconds d{-7};
  ASSERT_TRUE(parse_duration("250ms", d));
  EXPECT_EQ(d, 250ms);
  ASSERT_TRUE(parse_duration("5s", d));
  EXPECT_EQ(d, 5000ms);
  ASSERT_TRUE(parse_duration("2m", d));
  EXPECT_EQ(d, 120000ms);
  ASSERT_TRUE(parse_duration("3min", d));
  EXPECT_EQ(d, 180000ms);
  ASSERT_TRUE(parse_duration("100", d));
  EXPECT_EQ(d, 100ms);
  ASSERT_TRUE(parse_duration("0", d));
  EXPECT_EQ(d, 0ms);
}

TEST(parse_duration, rejects_what_it_does_not_understand) {
  for (auto bad : {"", "5h", "-1s", "s", "ms", "1.5s", " 5s", "5 s", "5S", "5sec", "1e3",
                   "9999999999999", "0x10"}) {
    milliseconds d{-7};
    EXPECT_FALSE(parse_duration(bad, d)) << "'" << bad << "'";
    EXPECT_EQ(d, milliseconds{-7}) << "'" << bad << "' changed the output";
  }
}

// -- the shipped INI files ------------------------------------------------------------------

struct shipped_config : config_test {};

TEST_F(shipped_config, ccn_ini) {
  auto path = (config_dir / "ccn.ini").string();
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  ASSERT_EQ(parse({"--config", path}), "");
  EXPECT_EQ(s.max_linked_crns, 3u);
  EXPECT_EQ(s.http_port, 4024);
  EXPECT_EQ(s.node_port, 4025);
  EXPECT_EQ(s.heartbeat_interval, 1000ms);
  EXPECT_EQ(s.failure_timeout, 5000ms);
  EXPECT_EQ(s.max_file_size, 104857600u);
  EXPECT_TRUE(s.group_commit);
  EXPECT_EQ(s.data_dir, "/var/lib/alephd/ccn");
  EXPECT_TRUE(s.peers.empty());
}

TEST_F(shipped_config, crn_ini) {
  auto path = (config_dir / "crn.ini").string();
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  ASSERT_EQ(parse({"--config", path}), "");
  EXPECT_EQ(s.http_port, 4020);
  EXPECT_EQ(s.ccn, std::vector<std::string>{"127.0.0.1:4025"});
  EXPECT_EQ(s.vcpus, 0u);
  EXPECT_EQ(s.memory_mib, 0u);
  EXPECT_EQ(s.heartbeat_interval, 1000ms);
  EXPECT_EQ(s.failure_timeout, 5000ms);
  EXPECT_EQ(s.data_dir, "/var/lib/alephd/crn");
}

TEST_F(shipped_config, dev_ini) {
  auto path = (config_dir / "dev.ini").string();
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  ASSERT_EQ(parse({"--config", path}), "");
  EXPECT_EQ(s.port_base, 4020u);
  EXPECT_EQ(s.dev_crns, 3u);
  EXPECT_EQ(s.max_linked_crns, 3u);
  EXPECT_EQ(s.data_dir, "./.alephd-dev");
}

TEST_F(shipped_config, every_shipped_file_parses) {
  size_t n = 0;
  for (auto& e : std::filesystem::directory_iterator(config_dir)) {
    // sim.ini configures `alephd sim`, not a node (sim_test parses it).
    if (e.path().extension() != ".ini" || e.path().filename() == "sim.ini")
      continue;
    ++n;
    EXPECT_EQ(parse({"--config", e.path().string()}), "") << e.path();
  }
  EXPECT_GE(n, 3u);
}

} // namespace

namespace {

TEST(config_limits, dev_crns_above_four_would_collide_with_the_ccn_ports) {
  alephd::settings s;
  bool help = false;
  auto err = alephd::parse_settings({"--crns=5"}, s, help);
  EXPECT_NE(err.find("dev.crns"), std::string::npos) << err;
}

} // namespace

} // namespace config_tests
