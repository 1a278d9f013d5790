// Real alephd processes on loopback ports the OS chooses: topology, failure
// detection, durability across kill -9, CCN replication, CRN fail-over, dev.
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <mutex>
#include <filesystem>
#include <functional>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/crypto.hpp"
#include "tests/cluster.hpp"
#include "tests/http_client.hpp"
#include "tests/process.hpp"

using namespace std::chrono_literals;
using nlohmann::json;
using alephd::test::cluster;
using alephd::test::eventually;
using alephd::test::http_request;
using alephd::test::localhost;
using alephd::test::process;

namespace {

std::string message_json(const std::string& text) {
  json m{{"chain", "ETH"},
         {"sender", "0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba"},
         {"type", "POST"},
         {"channel", "TEST"},
         {"item_type", "inline"},
         {"time", 1700000000.5},
         {"content", {{"address", "0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba"},
                      {"time", 1700000000.5},
                      {"type", "test"},
                      {"content", {{"text", text}}}}}};
  return m.dump();
}

std::string post_message(uint16_t port, const std::string& body) {
  auto r = http_request(localhost, port, "POST", "/api/v0/messages", body,
                        {{"Content-Type", "application/json"}}, 10s);
  if (r.status != 200)
    return {};
  return json::parse(r.body)["item_hash"].get<std::string>();
}

TEST_F(cluster, four_crns_make_three_linked_one_waiting_and_kill_promotes) {
  auto& ccn = start_ccn("ccn");
  auto ep = node_endpoint(ccn);
  auto http = ccn.port("http");
  for (int i = 0; i < 3; ++i) {
    start_crn("crn" + std::to_string(i), ep);
    // Register in order so that crn3 is the one left waiting.
    ASSERT_TRUE(eventually([&] { return count_state(crn_states(http), "linked") == size_t(i + 1); }, 10s));
  }
  start_crn("crn3", ep);
  ASSERT_TRUE(eventually([&] {
    auto s = crn_states(http);
    return count_state(s, "linked") == 3 && s["crn3"] == "waiting";
  }, 10s)) << json(crn_states(http)).dump();

  auto t0 = std::chrono::steady_clock::now();
  procs[1]->kill9(); // crn0
  ASSERT_TRUE(eventually([&] {
    auto s = crn_states(http);
    return s["crn0"] == "down" && s["crn3"] == "linked";
  }, 2s)) << "after SIGKILL: " << json(crn_states(http)).dump();
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  std::cerr << "SIGKILLed CRN seen down and waiting CRN linked after " << took.count() << " ms\n";
  // The promoted CRN knows it is linked.
  auto crn3_http = procs[4]->port("http");
  EXPECT_TRUE(eventually([&] {
    auto j = get_json(crn3_http, "/status/config");
    return j.is_object() && j["ccn"]["state"] == "linked";
  }, 3s));
}

TEST_F(cluster, a_ccn_restart_keeps_the_same_crns_linked) {
  auto* ccn = &start_ccn("ccn");
  auto http = ccn->port("http");
  auto node_port = std::to_string(ccn->port("node"));
  auto ep = node_endpoint(*ccn);
  for (int i = 0; i < 3; ++i) {
    start_crn("crn" + std::to_string(i), ep);
    ASSERT_TRUE(eventually([&] { return count_state(crn_states(http), "linked") == size_t(i + 1); }, 10s));
  }
  start_crn("crn3", ep);
  ASSERT_TRUE(eventually([&] { return crn_states(http)["crn3"] == "waiting"; }, 10s));
  auto before = crn_states(http);
  ccn->kill9();
  ccn = &start_ccn("ccn", {"--node-port=" + node_port});
  http = ccn->port("http");
  // Right after the restart every CRN is known (from LMDB) and down.
  auto restored = crn_states(http);
  EXPECT_EQ(restored.size(), 4u) << json(restored).dump();
  ASSERT_TRUE(eventually([&] { return crn_states(http) == before; }, 10s))
    << "before: " << json(before).dump() << " after: " << json(crn_states(http)).dump();
}

TEST_F(cluster, frozen_crn_is_down_within_failure_timeout_and_returns) {
  auto& ccn = start_ccn("ccn");
  auto http = ccn.port("http");
  auto& crn = start_crn("frozen", node_endpoint(ccn));
  start_crn("other", node_endpoint(ccn));
  ASSERT_TRUE(eventually([&] { return count_state(crn_states(http), "linked") == 2; }, 10s));
  auto t0 = std::chrono::steady_clock::now();
  crn.signal(SIGSTOP);
  // failure-timeout (1 s) + one heartbeat (200 ms) + the detector's half-heartbeat tick.
  ASSERT_TRUE(eventually([&] { return crn_states(http)["frozen"] == "down"; }, 3000ms));
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  std::cerr << "SIGSTOPped CRN seen down after " << took.count() << " ms\n";
  // Its last heartbeat may precede SIGSTOP by an interval or more on a loaded machine.
  EXPECT_GE(took.count(), 500) << "declared down long before failure-timeout";
  EXPECT_EQ(crn_states(http)["other"], "linked");
  crn.signal(SIGCONT);
  EXPECT_TRUE(eventually([&] { return crn_states(http)["frozen"] == "linked"; }, 10s));
}

// 8 clients post until `stop` is set or each has sent `limit`; returns every acknowledged hash.
struct posting_clients {
  std::atomic<bool> stop{false};
  std::atomic<size_t> acked_count{0};
  std::mutex mtx;
  std::vector<std::string> acked;
  std::vector<std::thread> threads;

  posting_clients(uint16_t port, const std::string& tag, int limit = 400) {
    for (int c = 0; c < 8; ++c)
      threads.emplace_back([this, port, tag, c, limit] {
        for (int i = 0; i < limit && !stop; ++i) {
          auto h = post_message(port, message_json(tag + "-" + std::to_string(c) + "-" + std::to_string(i)));
          if (h.empty())
            return; // the node is gone
          std::lock_guard<std::mutex> g{mtx};
          acked.push_back(h);
          ++acked_count;
        }
      });
  }

  std::vector<std::string> join() {
    stop = true;
    for (auto& t : threads)
      t.join();
    threads.clear();
    return acked;
  }

  ~posting_clients() {
    join();
  }
};

TEST_F(cluster, messages_acknowledged_before_a_kill9_survive_it) {
  auto* ccn = &start_ccn("ccn");
  auto http = ccn->port("http");
  std::string blob(300000, '\0');
  std::mt19937 rng{42};
  for (auto& ch : blob)
    ch = static_cast<char>(rng());
  auto up = http_request(localhost, http, "POST", "/api/v0/storage/add_file", blob, {}, 10s);
  ASSERT_EQ(up.status, 200) << up.body;
  auto file_hash = json::parse(up.body)["hash"].get<std::string>();
  posting_clients clients{http, "kill"};
  // Kill the CCN in the middle of the traffic, with requests in flight.
  ASSERT_TRUE(eventually([&] { return clients.acked_count >= 150; }, 20s));
  ccn->kill9();
  auto acked = clients.join();
  ccn = &start_ccn("ccn");
  http = ccn->port("http");
  for (auto& h : acked) {
    auto r = http_request(localhost, http, "GET", "/api/v0/messages/" + h, {}, {}, 5s);
    ASSERT_EQ(r.status, 200) << "lost acknowledged message " << h;
  }
  auto list = get_json(http, "/api/v0/messages?pagination=1");
  EXPECT_GE(list["pagination_total"].get<size_t>(), acked.size());
  auto raw = http_request(localhost, http, "GET", "/api/v0/storage/raw/" + file_hash, {}, {}, 10s);
  ASSERT_EQ(raw.status, 200);
  EXPECT_TRUE(raw.body == blob) << "file content changed across kill -9";
}

// The resident set of `pid` (VmRSS, bytes) before and after burst(n), once burst(warm_up) has
// settled its allocator arenas and caches.
struct rss_change {
  uint64_t before = 0;
  uint64_t after = 0;
};
rss_change rss_over(int pid, const std::function<void(int)>& burst, int warm_up, int n) {
  burst(warm_up);
  rss_change r;
  r.before = alephd::test::status_bytes(pid, "VmRSS");
  burst(n);
  r.after = alephd::test::status_bytes(pid, "VmRSS");
  return r;
}

// Each request that an actor answers (through a short-lived actor of the HTTP gateway) used to
// leave a monitor on the answering actor, and with it ~1–2 KiB of the requester: 20,000
// requests grew a CCN by 22–44 MB. Now the CCN's memory stays flat.
TEST_F(cluster, requests_answered_by_actors_leave_no_memory_behind) {
  auto& ccn = start_ccn("ccn");
  alephd::sim::http_connection conn{localhost, ccn.port("http")};
  auto burst = [&](int n) {
    for (int i = 0; i < n; ++i) {
      auto nodes = conn.request("GET", "/api/v0/nodes");
      ASSERT_EQ(nodes.status, 200) << nodes.body;
      char hash[65];
      std::snprintf(hash, sizeof hash, "%064x", i);
      auto missing = conn.request("GET", std::string{"/api/v0/messages/"} + hash);
      ASSERT_EQ(missing.status, 404) << missing.body;
    }
  };
  auto r = rss_over(ccn.pid(), burst, 1000, 10000);
  ASSERT_GT(r.before, 0u);
  EXPECT_LT(r.after, r.before + (6ull << 20)) << "RSS went from " << r.before << " to " << r.after
                                              << " bytes over 20,000 requests";
}

// A CRN's usage answer gathers every cache shard's figures: those inner requests must not
// hold memory once answered either (CAF 0.17 keeps a request's timeout until it fires; with
// 60 s timeouts a CRN grew 7.5 MiB per 10,000 calls).
TEST_F(cluster, a_crn_answering_usage_under_load_keeps_no_memory_behind) {
  auto& ccn = start_ccn("ccn");
  auto& crn = start_crn("crn", node_endpoint(ccn));
  alephd::sim::http_connection conn{localhost, crn.port("http")};
  auto burst = [&](int n) {
    for (int i = 0; i < n; ++i) {
      auto usage = conn.request("GET", "/about/usage/system");
      ASSERT_EQ(usage.status, 200) << usage.body;
    }
  };
  auto r = rss_over(crn.pid(), burst, 500, 10000);
  ASSERT_GT(r.before, 0u);
  EXPECT_LT(r.after, r.before + (3ull << 20)) << "RSS went from " << r.before << " to " << r.after
                                              << " bytes over 10,000 usage requests";
}

TEST_F(cluster, sigterm_under_load_stops_promptly_and_keeps_what_was_acknowledged) {
  auto* ccn = &start_ccn("ccn");
  auto http = ccn->port("http");
  posting_clients clients{http, "term"};
  ASSERT_TRUE(eventually([&] { return clients.acked_count >= 150; }, 20s));
  auto t0 = std::chrono::steady_clock::now();
  ccn->signal(SIGTERM);
  EXPECT_EQ(ccn->wait_exit(10s), 0) << ccn->log();
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  EXPECT_LT(took.count(), 5000) << "SIGTERM under load took " << took.count() << " ms";
  auto acked = clients.join();
  ccn = &start_ccn("ccn");
  http = ccn->port("http");
  for (auto& h : acked)
    ASSERT_EQ(http_request(localhost, http, "GET", "/api/v0/messages/" + h, {}, {}, 5s).status, 200)
      << "lost acknowledged message " << h;
}

TEST_F(cluster, peer_ccns_replicate_messages_and_files_both_ways) {
  auto& a = start_ccn("ccn-a");
  auto& b = start_ccn("ccn-b", {"--peer=" + node_endpoint(a)});
  auto ha = a.port("http"), hb = b.port("http");
  auto h1 = post_message(ha, message_json("from a"));
  ASSERT_FALSE(h1.empty());
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(eventually([&] {
    return http_request(localhost, hb, "GET", "/api/v0/messages/" + h1, {}, {}, 2s).status == 200;
  }, 2s)) << "a message posted on A is not readable on B within 2 s";
  std::cerr << "replicated A->B in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()
            << " ms\n";
  auto h2 = post_message(hb, message_json("from b"));
  EXPECT_TRUE(eventually([&] {
    return http_request(localhost, ha, "GET", "/api/v0/messages/" + h2, {}, {}, 2s).status == 200;
  }, 2s)) << "a message posted on B is not readable on A within 2 s";
  auto up = http_request(localhost, ha, "POST", "/api/v0/storage/add_file", "replicated file body", {}, 5s);
  ASSERT_EQ(up.status, 200);
  auto fh = json::parse(up.body)["hash"].get<std::string>();
  EXPECT_TRUE(eventually([&] {
    auto r = http_request(localhost, hb, "GET", "/api/v0/storage/raw/" + fh, {}, {}, 2s);
    return r.status == 200 && r.body == "replicated file body";
  }, 2s));
  // B lists A as an active peer.
  auto nodes = get_json(hb, "/api/v0/nodes");
  ASSERT_TRUE(nodes.is_object());
  EXPECT_EQ(nodes["ccns"].size(), 2u);
}

TEST_F(cluster, a_peer_that_was_down_catches_up_when_it_returns) {
  auto& a = start_ccn("ccn-a");
  auto a_node = node_endpoint(a);
  auto* b = &start_ccn("ccn-b", {"--peer=" + a_node});
  auto ha = a.port("http");
  auto b_node_port = std::to_string(b->port("node"));
  b->kill9();
  auto h = post_message(ha, message_json("while b was down"));
  ASSERT_FALSE(h.empty());
  b = &start_ccn("ccn-b", {"--peer=" + a_node, "--node-port=" + b_node_port});
  auto hb = b->port("http");
  EXPECT_TRUE(eventually([&] {
    return http_request(localhost, hb, "GET", "/api/v0/messages/" + h, {}, {}, 2s).status == 200;
  }, 5s));
}

TEST_F(cluster, crn_fails_over_to_its_second_ccn) {
  auto& a = start_ccn("ccn-a");
  auto& b = start_ccn("ccn-b");
  auto& crn = start_crn("crn", node_endpoint(a) + "," + node_endpoint(b));
  auto crn_http = crn.port("http");
  ASSERT_TRUE(eventually([&] { return crn_states(a.port("http"))["crn"] == "linked"; }, 10s));
  a.kill9();
  EXPECT_TRUE(eventually([&] { return crn_states(b.port("http"))["crn"] == "linked"; }, 10s))
    << "the CRN did not link to its second CCN";
  // While it moved, and after, the CRN kept serving and shows its link.
  auto cfg = get_json(crn_http, "/status/config");
  ASSERT_TRUE(cfg.is_object());
  EXPECT_EQ(cfg["ccn"]["endpoint"], node_endpoint(b));
  auto metrics = http_request(localhost, crn_http, "GET", "/metrics", {}, {}, 5s);
  const std::string key = "\nalephd_ccn_reconnects_total ";
  auto at = metrics.body.find(key);
  ASSERT_NE(at, std::string::npos) << metrics.body;
  EXPECT_GE(std::stoi(metrics.body.substr(at + key.size())), 1) << metrics.body;
}

TEST_F(cluster, crn_serves_while_no_ccn_is_reachable) {
  auto& crn = start_crn("lonely", "127.0.0.1:1");
  auto http = crn.port("http");
  auto cfg = get_json(http, "/status/config");
  ASSERT_TRUE(cfg.is_object());
  EXPECT_EQ(cfg["ccn"]["connected"], false);
  EXPECT_EQ(http_request(localhost, http, "GET", "/about/usage/system").status, 200);
}

TEST_F(cluster, persistent_instance_is_placed_on_a_linked_crn) {
  auto& ccn = start_ccn("ccn");
  auto http = ccn.port("http");
  start_crn("crn0", node_endpoint(ccn));
  ASSERT_TRUE(eventually([&] { return count_state(crn_states(http), "linked") == 1; }, 10s));
  std::ifstream in{std::string{ALEPHD_PEER_DATA_DIR} + "/instance_machine.json"};
  std::string body{std::istreambuf_iterator<char>{in}, {}};
  auto h = post_message(http, body);
  ASSERT_FALSE(h.empty());
  json alloc;
  ASSERT_TRUE(eventually([&] {
    auto j = get_json(http, "/api/v0/allocations");
    if (!j.is_object() || j["allocations"].empty())
      return false;
    alloc = j["allocations"][0];
    return alloc["state"] == "allocated";
  }, 5s)) << alloc.dump();
  EXPECT_EQ(alloc["item_hash"], h);
  auto list = get_json(procs[1]->port("http"), "/v2/about/executions/list");
  ASSERT_TRUE(list.contains(h)) << list.dump();
  EXPECT_EQ(list[h]["vm_type"], "instance");
}

TEST_F(cluster, placements_survive_a_ccn_restart_and_are_confirmed_by_their_crn) {
  auto* ccn = &start_ccn("ccn");
  auto http = ccn->port("http");
  auto node_port = std::to_string(ccn->port("node"));
  start_crn("crn0", node_endpoint(*ccn));
  ASSERT_TRUE(eventually([&] { return count_state(crn_states(http), "linked") == 1; }, 10s));
  std::ifstream in{std::string{ALEPHD_PEER_DATA_DIR} + "/instance_machine.json"};
  auto h = post_message(http, std::string{std::istreambuf_iterator<char>{in}, {}});
  ASSERT_FALSE(h.empty());
  auto allocation_of = [&](uint16_t port) {
    auto j = get_json(port, "/api/v0/allocations");
    return j.is_object() && !j["allocations"].empty() ? j["allocations"][0] : json::object();
  };
  ASSERT_TRUE(eventually([&] { return allocation_of(http).value("state", "") == "allocated"; }, 5s));
  auto crn_id = allocation_of(http)["crn"];
  ccn->kill9();
  ccn = &start_ccn("ccn", {"--node-port=" + node_port});
  http = ccn->port("http");
  // Known at once from LMDB, then confirmed by the same CRN when it registers again.
  EXPECT_EQ(allocation_of(http).value("item_hash", ""), h);
  ASSERT_TRUE(eventually([&] { return crn_states(http)["crn0"] == "linked"; }, 10s));
  ASSERT_TRUE(eventually([&] {
    auto a = allocation_of(http);
    return a.value("state", "") == "allocated" && a["crn"] == crn_id;
  }, 5s)) << allocation_of(http).dump();
  EXPECT_EQ(allocation_of(http)["epoch"], 1) << "a confirmed placement keeps its epoch";
}

TEST_F(cluster, crn_http_api_has_aleph_vm_shapes) {
  auto& ccn = start_ccn("ccn");
  auto& crn = start_crn("crn", node_endpoint(ccn));
  auto http = crn.port("http");
  EXPECT_EQ(http_request(localhost, http, "GET", "/about/login").status, 401);
  EXPECT_EQ(http_request(localhost, http, "GET", "/about/login?token=wrong").status, 401);
  std::ifstream tok{(dir / "crn" / "login_token").string()};
  std::string token;
  tok >> token;
  ASSERT_EQ(token.size(), 64u);
  auto ok = http_request(localhost, http, "GET", "/about/login?token=" + token);
  EXPECT_EQ(ok.status, 200);
  EXPECT_NE(ok.headers["set-cookie"].find("token="), std::string::npos);
  EXPECT_EQ(http_request(localhost, http, "GET", "/about/login", {}, {{"Cookie", "token=" + token}}).status, 200);
  auto usage = get_json(http, "/about/usage/system");
  ASSERT_TRUE(usage.is_object());
  EXPECT_GT(usage["cpu"]["count"].get<int>(), 0);
  EXPECT_GT(usage["mem"]["total_kB"].get<uint64_t>(), usage["mem"]["available_kB"].get<uint64_t>() / 2);
  EXPECT_GT(usage["disk"]["total_kB"].get<uint64_t>(), 0u);
  EXPECT_TRUE(get_json(http, "/about/executions/list").is_object());
  EXPECT_TRUE(get_json(http, "/v2/about/executions/list").is_object());
  auto cfg = get_json(http, "/status/config");
  EXPECT_EQ(cfg["version"], ALEPHD_VERSION);
  ASSERT_TRUE(eventually([&] {
    auto m = http_request(localhost, http, "GET", "/metrics");
    return m.status == 200 && m.body.find("alephd_ccn_link_state{state=\"linked\"} 1") != std::string::npos
           && m.body.find("alephd_heartbeats_sent_total") != std::string::npos;
  }, 5s));
  auto nf = http_request(localhost, http, "GET", "/no/such/route");
  EXPECT_EQ(nf.status, 404);
  EXPECT_TRUE(json::parse(nf.body, nullptr, false).contains("error"));
}

TEST_F(cluster, dev_starts_answers_and_stops_on_sigterm) {
  // Find six consecutive free ports for --port-base.
  uint16_t base = 0;
  std::mt19937 rng{std::random_device{}()};
  for (int attempt = 0; attempt < 50 && base == 0; ++attempt) {
    auto b = static_cast<uint16_t>(20000 + rng() % 30000);
    bool free = true;
    for (int i = 0; i < 6 && free; ++i)
      free = alephd::test::port_free(static_cast<uint16_t>(b + i));
    if (free)
      base = b;
  }
  ASSERT_NE(base, 0);
  procs.push_back(std::make_unique<process>(
    std::vector<std::string>{"dev", "--port-base=" + std::to_string(base), "--data-dir=" + (dir / "dev").string()},
    (dir / "dev.log").string()));
  auto& dev = *procs.back();
  ASSERT_TRUE(dev.wait_ready()) << dev.log();
  uint16_t ccn_http = static_cast<uint16_t>(base + 4);
  ASSERT_TRUE(eventually([&] { return count_state(crn_states(ccn_http), "linked") == 3; }, 10s));
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(http_request(localhost, static_cast<uint16_t>(base + i), "GET", "/about/usage/system").status, 200);
  dev.signal(SIGTERM);
  EXPECT_EQ(dev.wait_exit(10s), 0) << "alephd dev did not exit cleanly on SIGTERM";
}

// A wallet-signed message as a client makes it: item_content, its sha256, the signature.
json signed_store(const std::string& secret, const std::string& file_hash) {
  namespace crypto = alephd::crypto;
  auto sender = *crypto::eth_address(secret);
  json content{{"address", sender}, {"time", 1700000000.5}, {"item_type", "storage"},
               {"item_hash", file_hash}};
  auto item_content = content.dump();
  auto item_hash = crypto::to_hex(crypto::sha256(item_content));
  return {{"chain", "ETH"}, {"sender", sender}, {"type", "STORE"}, {"item_type", "inline"},
          {"time", 1700000000.5}, {"item_content", item_content}, {"item_hash", item_hash},
          {"signature", crypto::eth_personal_sign(
                          secret, crypto::message_verification_text("ETH", sender, "STORE", item_hash))}};
}

TEST_F(cluster, ccn_accepts_only_messages_its_sender_signed) {
  namespace crypto = alephd::crypto;
  // The default configuration of `alephd ccn`: signatures are checked.
  auto& ccn = start("ccn", {"ccn", "--port=0", "--node-port=0"});
  auto http = ccn.port("http");
  auto post = [&](const std::string& body) {
    return http_request(localhost, http, "POST", "/api/v0/messages", body,
                        {{"Content-Type", "application/json"}}, 10s);
  };
  auto error_of = [](const alephd::test::http_result& r) {
    auto j = json::parse(r.body, nullptr, false);
    return j.is_object() && j.contains("error") ? j["error"].get<std::string>() : r.body;
  };
  // A message the network published, signed by its sender's wallet.
  std::ifstream in{std::string{ALEPHD_PEER_DATA_DIR} + "/instance_content.json"};
  std::string real{std::istreambuf_iterator<char>{in}, {}};
  auto r = post(real);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(http_request(localhost, http, "GET",
                         "/api/v0/messages/b28fa9a9ede14c9bbd6fde8959be07cfd25a3358d08e01405301adc5a1a2b2c8")
              .status,
            200);

  std::string secret(32, '\x07');
  auto good = signed_store(secret, std::string(64, 'e'));
  r = post(good.dump());
  EXPECT_EQ(r.status, 200) << r.body;

  auto unsigned_msg = good;
  unsigned_msg.erase("signature");
  r = post(unsigned_msg.dump());
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(error_of(r).find("no signature"), std::string::npos) << r.body;

  // Someone else's wallet signs in the sender's name.
  auto forged = signed_store(std::string(32, '\x09'), std::string(64, 'f'));
  forged["sender"] = good["sender"];
  r = post(forged.dump());
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(error_of(r).find("not by the sender"), std::string::npos) << r.body;

  // A signature lifted from one message onto another.
  auto lifted = signed_store(secret, std::string(64, 'd'));
  lifted["signature"] = good["signature"];
  r = post(lifted.dump());
  EXPECT_EQ(r.status, 403) << r.body;

  // The schema fixtures carry a signature copied between files.
  std::ifstream fin{std::string{ALEPHD_PEER_DATA_DIR} + "/forget.json"};
  r = post(std::string{std::istreambuf_iterator<char>{fin}, {}});
  EXPECT_EQ(r.status, 403) << r.body;

  // A Solana wallet.
  auto key = crypto::ed25519_generate();
  auto sol_sender = crypto::base58_encode(key.public_key);
  json content{{"address", sol_sender}, {"time", 1700000001.0}, {"item_type", "storage"},
               {"item_hash", std::string(64, 'c')}};
  auto item_content = content.dump();
  auto item_hash = crypto::to_hex(crypto::sha256(item_content));
  json sol{{"chain", "SOL"}, {"sender", sol_sender}, {"type", "STORE"}, {"item_type", "inline"},
           {"time", 1700000001.0}, {"item_content", item_content}, {"item_hash", item_hash},
           {"signature", crypto::sol_signature_field(
                           key, crypto::message_verification_text("SOL", sol_sender, "STORE", item_hash))}};
  r = post(sol.dump());
  EXPECT_EQ(r.status, 200) << r.body;
  sol["type"] = "POST"; // what was signed says STORE
  r = post(sol.dump());
  EXPECT_EQ(r.status, 403) << r.body;

  // Only the accepted messages are stored.
  auto list = http_request(localhost, http, "GET", "/api/v0/messages?msgType=STORE");
  ASSERT_EQ(list.status, 200);
  auto page = json::parse(list.body);
  std::set<std::string> stored;
  for (auto& m : page["messages"])
    stored.insert(m["item_hash"].get<std::string>());
  EXPECT_EQ(stored, (std::set<std::string>{good["item_hash"], item_hash}));
}

TEST_F(cluster, a_crn_is_its_node_key_and_a_second_process_with_it_is_refused) {
  namespace crypto = alephd::crypto;
  auto& ccn = start_ccn("ccn");
  auto http = ccn.port("http");
  auto& a = start_crn("crn-a", node_endpoint(ccn));
  ASSERT_TRUE(eventually([&] { return crn_states(http)["crn-a"] == "linked"; }, 10s));
  // Its key: made at first start, private to its user; its id is the hash of the public key.
  auto key_path = dir / "crn-a" / "node.key";
  auto perms = std::filesystem::status(key_path).permissions();
  EXPECT_EQ(perms & std::filesystem::perms::all, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  std::ifstream kin{key_path};
  std::string seed_hex;
  kin >> seed_hex;
  auto key = crypto::ed25519_from_seed(crypto::from_hex(seed_hex).value_or(""));
  ASSERT_TRUE(key);
  EXPECT_EQ(a.ready.at("id"), crypto::node_id_of(key->public_key));
  // A copy of its key in a second process: refused while crn-a is alive.
  std::filesystem::create_directories(dir / "impostor");
  std::filesystem::copy_file(key_path, dir / "impostor" / "node.key");
  auto& impostor = start_crn("impostor", node_endpoint(ccn));
  EXPECT_EQ(impostor.ready.at("id"), a.ready.at("id"));
  ASSERT_TRUE(eventually([&] {
    return impostor.log().find("another live process") != std::string::npos;
  }, 10s)) << impostor.log();
  auto states = crn_states(http);
  EXPECT_EQ(states.size(), 1u);
  EXPECT_EQ(states["crn-a"], "linked");
  // Once crn-a is gone, the holder of its key may take its place.
  a.kill9();
  EXPECT_TRUE(eventually([&] { return crn_states(http)["impostor"] == "linked"; }, 15s))
    << json(crn_states(http)).dump();
}

// A CA and certificates for `names`, made with the openssl command line in `dir`.
bool make_certificates(const std::filesystem::path& dir, const std::string& ca,
                       const std::vector<std::string>& names) {
  auto run = [](const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; };
  auto d = dir.string() + "/";
  if (!run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN="
           + ca + " -keyout " + d + ca + ".key -out " + d + ca + ".pem"))
    return false;
  for (auto& n : names)
    if (!run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=" + n
             + " -keyout " + d + n + ".key -out " + d + n + ".csr")
        || !run("openssl x509 -req -days 2 -in " + d + n + ".csr -CA " + d + ca + ".pem -CAkey "
                + d + ca + ".key -CAcreateserial -out " + d + n + ".pem"))
      return false;
  return true;
}

TEST_F(cluster, node_links_run_over_tls_and_refuse_nodes_without_a_certificate_of_the_ca) {
  auto certs = dir / "certs";
  std::filesystem::create_directories(certs);
  ASSERT_TRUE(make_certificates(certs, "ca", {"ccn", "crn-ok"}));
  ASSERT_TRUE(make_certificates(certs, "other-ca", {"crn-stranger"}));
  auto tls = [&](const std::string& name, const std::string& ca) {
    auto d = certs.string() + "/";
    return std::vector<std::string>{"--tls-cert=" + d + name + ".pem", "--tls-key=" + d + name + ".key",
                                     "--tls-ca=" + d + ca + ".pem"};
  };
  auto& ccn = start_ccn("ccn", tls("ccn", "ca"));
  auto http = ccn.port("http");
  auto with = [&](std::vector<std::string> args, const std::vector<std::string>& more) {
    args.insert(args.end(), more.begin(), more.end());
    return args;
  };
  std::vector<std::string> crn_args{"crn", "--port=0", "--ccn=" + node_endpoint(ccn),
                                    "--cache.max-bytes=1073741824"};
  for (auto& a : timing())
    crn_args.push_back(a);
  auto& ok = start("crn-ok", with(crn_args, tls("crn-ok", "ca")));
  ASSERT_TRUE(eventually([&] { return crn_states(http)["crn-ok"] == "linked"; }, 10s))
    << json(crn_states(http)).dump();
  // Plain TCP, and a certificate from another CA: neither gets through the handshake.
  auto& plain = start("crn-plain", crn_args);
  auto& stranger = start("crn-stranger", with(crn_args, tls("crn-stranger", "other-ca")));
  // Several failed handshakes each, while the linked CRN's link must not suffer from them.
  auto failures = [](const std::string& log) {
    size_t n = 0;
    for (auto p = log.find("cannot connect to CCN"); p != std::string::npos;
         p = log.find("cannot connect to CCN", p + 1))
      ++n;
    return n;
  };
  ASSERT_TRUE(eventually([&] { return failures(plain.log()) >= 4 && failures(stranger.log()) >= 4; }, 15s))
    << plain.log() << stranger.log();
  auto states = crn_states(http);
  EXPECT_EQ(states.count("crn-plain"), 0u) << json(states).dump();
  EXPECT_EQ(states.count("crn-stranger"), 0u) << json(states).dump();
  EXPECT_EQ(states["crn-ok"], "linked");
  EXPECT_EQ(ok.log().find("CCN is gone"), std::string::npos) << ok.log();
}

TEST_F(cluster, help_and_version_exit_0) {
  process help{{"--help"}, (dir / "help.log").string()};
  EXPECT_EQ(help.wait_exit(10s), 0);
  help.wait_ready(100ms); // drains stdout into output()
  EXPECT_NE(help.output().find("alephd ccn"), std::string::npos) << help.output();
  EXPECT_NE(help.output().find("--ccn.max-linked-crns"), std::string::npos);
  process version{{"--version"}, (dir / "version.log").string()};
  EXPECT_EQ(version.wait_exit(10s), 0);
  version.wait_ready(100ms);
  EXPECT_EQ(version.output(), std::string{"alephd "} + ALEPHD_VERSION + "\n");
}

TEST_F(cluster, bad_arguments_exit_2_with_one_line) {
  // `alephd args` exits with `code` and says why in one line.
  auto expect_one_line_exit = [&](const std::vector<std::string>& args, int code) {
    process p{args, (dir / "bad.log").string()};
    EXPECT_EQ(p.wait_exit(10s), code);
    auto log = p.log();
    std::filesystem::remove(dir / "bad.log");
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
    EXPECT_EQ(log.rfind("alephd: ", 0), 0u) << log;
  };
  for (std::vector<std::string> args : {std::vector<std::string>{"ccn", "--http.port=99999"},
                                        {"crn", "--ccn=not-an-endpoint"},
                                        {"ccn", "--no-such-option=1"},
                                        {"frobnicate"},
                                        {"ccn", "--config=/nonexistent.ini"},
                                        {"ccn", "--rewards.stakes=ccn:addr"},
                                        {"ccn", "--pricing.program=cheap"},
                                        {"ccn", "--verify-signatures=maybe"},
                                        {"ccn", "--tls-cert=/etc/hostname"},
                                        {"ccn", "--tls-cert=/etc/hostname", "--tls-key=/etc/hostname", "--tls-ca=/etc/hostname"},
                                        {"ledger"},
                                        {"ledger", "verify", "--bogus"},
                                        {"rewards", "--epoch=soon"}})
    expect_one_line_exit(args, 2);
  // Nothing to read: exit 1.
  expect_one_line_exit({"ledger", "verify", "--data-dir", (dir / "none").string()}, 1);
  expect_one_line_exit({"rewards", "--data-dir", (dir / "none").string()}, 1);
}

} // namespace
