#include "actors/ccn_node.hpp"
#include "actors/ccn_peer.hpp"
#include "actors/content_store.hpp"
#include "actors/crn_registry.hpp"
#include "runtime/crypto.hpp"
#include "actors/message_store.hpp"

#include <nlohmann/json.hpp>

#include "messages/aleph_message.hpp"
#include "tests/caf_fixture.hpp"
#include "tests/stored_message.hpp"

using namespace alephd;
using namespace alephd::test;

// Named so that the suites can share one unity-built test binary.
namespace ccn_peer_tests {

namespace {

const std::string wallet = std::string(31, '\0') + "\x2a"; // a test key, never a real wallet

// A valid POST message whose content carries `text`, signed by `signer`'s wallet; its
// item_hash is derived from the content.
stored_message msg(const std::string& text, std::string origin, const std::string& signer = wallet) {
  auto sender = *crypto::eth_address(wallet);
  nlohmann::ordered_json j{{"chain", "ETH"},
                           {"sender", sender},
                           {"type", "POST"},
                           {"item_type", "inline"},
                           {"time", 1700000000},
                           {"content", {{"address", sender}, {"time", 1700000000}, {"text", text}}}};
  auto parsed = aleph::parse_message(j);
  EXPECT_TRUE(parsed.ok()) << parsed.error.field << ": " << parsed.error.reason;
  parsed.msg->signature = crypto::eth_personal_sign(
    signer, crypto::message_verification_text("ETH", sender, "POST", parsed.msg->item_hash));
  stored_message m;
  m.item_hash = parsed.msg->item_hash;
  m.type = "POST";
  m.sender = sender;
  m.origin = std::move(origin);
  m.json = aleph::to_json(*parsed.msg).dump();
  return m;
}

std::string hash_of(const std::string& text) {
  return msg(text, "").item_hash;
}

// One CCN's stores, peer actor and entry actor in the shared deterministic system.
struct ccn_parts {
  temp_dir dir;
  std::shared_ptr<lmdb::env> env;
  message_store_actor messages;
  content_store_actor files;
  crn_registry_actor registry;
  ccn_peer_actor peer;
  ccn_node_actor node;
};

ccn_peer_config peer_config(const std::string& id, std::vector<ccn_node_actor> direct) {
  ccn_peer_config c;
  c.ccn_id = id;
  c.direct = std::move(direct);
  return c;
}

struct ccn_peer_test : caf_fixture {
  std::unique_ptr<ccn_parts> make(const std::string& id, std::vector<ccn_node_actor> direct = {},
                                  uint64_t max_held_bytes = uint64_t{64} << 20) {
    auto p = std::make_unique<ccn_parts>();
    p->env = open_test_env(p->dir);
    p->messages = spawn(message_store, p->env, true);
    content_store_config cc;
    cc.root = p->dir.str() + "/blobs";
    cc.env = p->env;
    cc.max_file_bytes = uint64_t{1} << 20;
    cc.scrub_bytes = 0;
    p->files = spawn(content_store, cc);
    crn_registry_config rc;
    rc.ccn_id = id;
    p->registry = spawn(crn_registry, rc);
    auto pc = peer_config(id, std::move(direct));
    pc.max_held_bytes = max_held_bytes;
    p->peer = spawn(ccn_peer, pc, p->messages, p->files);
    p->node = spawn(ccn_node, id, p->registry, p->peer, p->messages, p->files, scheduler_actor{},
                    std::shared_ptr<const http_locator>{}, usage_book_actor{});
    return p;
  }

  bool has_message(const ccn_parts& p, const std::string& hash) {
    return ask<stored_message>(p.messages, atom::get_v, hash).value.has_value();
  }
};

TEST_F(ccn_peer_test, ccn_node_answers_hello_with_registry_peer_and_id) {
  auto a = make("ccn-a");
  auto out = std::make_shared<std::string>();
  sys.spawn([node = a->node, out](caf::event_based_actor* self) {
    self->request(node, caf::infinite, atom::hello_v)
      .then([out](const crn_registry_actor& r, const caf::actor& p, const std::string& id) {
        *out = id + (r ? ":registry" : "") + (p ? ":peer" : "");
      });
  });
  sched.run();
  EXPECT_EQ(*out, "ccn-a:registry:peer");
}

// A STORE document by `owner` at `time`, amending `ref` when it is given.
nlohmann::ordered_json store_by(const std::string& owner, double time, const std::string& file,
                                const std::string& ref = {}) {
  nlohmann::ordered_json content{{"address", owner}, {"time", time}, {"item_type", "storage"},
                                 {"item_hash", file}};
  if (!ref.empty())
    content["ref"] = ref;
  return {{"chain", "ETH"}, {"sender", owner}, {"type", "STORE"}, {"item_type", "inline"},
          {"time", time}, {"content", content}};
}

TEST_F(ccn_peer_test, use_latest_resolves_the_newest_amend_by_the_same_owner) {
  auto a = make("ccn-a");
  const std::string owner = "0x1111111111111111111111111111111111111111";
  const std::string other = "0x2222222222222222222222222222222222222222";
  auto original = test::stored_from(store_by(owner, 100, std::string(64, '1')), "ccn-a");
  auto amend = test::stored_from(store_by(owner, 200, std::string(64, '2'), original.item_hash), "ccn-a");
  auto older = test::stored_from(store_by(owner, 150, std::string(64, '3'), original.item_hash), "ccn-a");
  auto foreign = test::stored_from(store_by(other, 300, std::string(64, '4'), original.item_hash), "ccn-a");
  auto unrelated = test::stored_from(store_by(owner, 400, std::string(64, '5')), "ccn-a");
  for (auto& m : {original, amend, older, foreign, unrelated})
    ASSERT_TRUE(ask<append_result>(a->messages, atom::append_v, m).value);
  auto latest = ask<stored_message>(a->node, atom::get_v, original.item_hash, true);
  ASSERT_TRUE(latest.value) << describe(latest.error);
  EXPECT_EQ(latest.value->item_hash, amend.item_hash)
    << "the newest amend by the owner; another owner's cannot replace the file";
  auto plain = ask<stored_message>(a->node, atom::get_v, original.item_hash, false);
  ASSERT_TRUE(plain.value);
  EXPECT_EQ(plain.value->item_hash, original.item_hash);
  // Without amends, the message itself.
  auto alone = ask<stored_message>(a->node, atom::get_v, unrelated.item_hash, true);
  ASSERT_TRUE(alone.value);
  EXPECT_EQ(alone.value->item_hash, unrelated.item_hash);
}

TEST_F(ccn_peer_test, new_messages_and_files_are_pushed_to_the_peer) {
  auto a = make("ccn-a");
  auto b = make("ccn-b", {a->node});
  sched.run();
  ASSERT_TRUE(ask<append_result>(a->messages, atom::append_v, msg("m1", "ccn-a")).value);
  sched.run();
  EXPECT_TRUE(has_message(*b, hash_of("m1")));
  ASSERT_TRUE(ask<append_result>(b->messages, atom::append_v, msg("m2", "ccn-b")).value);
  sched.run();
  EXPECT_TRUE(has_message(*a, hash_of("m2"))) << "replication must work in both directions";
  auto f = ask<file_info>(a->files, atom::put_v, std::string{"file body"});
  ASSERT_TRUE(f.value);
  sched.run();
  auto got = ask<file_blob>(b->files, atom::read_v, f.value->hash);
  ASSERT_TRUE(got.value);
  EXPECT_EQ(got.value->data, "file body");
  // The origin is kept, so only the accepting CCN schedules a workload.
  EXPECT_EQ(ask<stored_message>(b->messages, atom::get_v, hash_of("m1")).value->origin, "ccn-a");
}

TEST_F(ccn_peer_test, peers_swap_what_the_other_lacks_when_they_meet) {
  auto a = make("ccn-a");
  ASSERT_TRUE(ask<append_result>(a->messages, atom::append_v, msg("old-a", "ccn-a")).value);
  ASSERT_TRUE(ask<file_info>(a->files, atom::put_v, std::string{"old file"}).value);
  auto b_only = make("ccn-b");
  ASSERT_TRUE(ask<append_result>(b_only->messages, atom::append_v, msg("old-b", "ccn-b")).value);
  // A third CCN meets A: it gets A's history. A and B then meet through a fresh peer actor.
  auto c = make("ccn-c", {a->node});
  sched.run();
  EXPECT_TRUE(has_message(*c, hash_of("old-a")));
  EXPECT_EQ(ask<std::vector<std::string>>(c->files, atom::inventory_v).value->size(), 1u);
  auto b_peer = spawn(ccn_peer, peer_config("ccn-b", {a->node}), b_only->messages, b_only->files);
  sched.run();
  EXPECT_TRUE(has_message(*b_only, hash_of("old-a")));
  EXPECT_TRUE(has_message(*a, hash_of("old-b")));
}

// Fills a CCN's store as a full disk would: its map shrinks to the pages in use and a ballast
// takes the free ones. Returns the ballast, for free_store().
MDB_dbi fill_store(lmdb::env& env) {
  MDB_dbi ballast = 0;
  std::string err;
  EXPECT_TRUE(env.open_db("ballast", ballast, err)) << err;
  EXPECT_EQ(mdb_env_set_mapsize(env.get(), 1), 0);
  for (uint64_t k = 0; k < 100000; ++k) {
    lmdb::txn t{env, true};
    int rc = t.put(ballast, lmdb::be64(k), std::string(1500, 'b'));
    if (rc == 0)
      rc = t.commit();
    if (rc != 0) {
      EXPECT_EQ(rc, MDB_MAP_FULL);
      break;
    }
  }
  return ballast;
}

void free_store(lmdb::env& env, MDB_dbi ballast) {
  ASSERT_EQ(mdb_env_set_mapsize(env.get(), uint64_t{1} << 30), 0);
  lmdb::txn t{env, true};
  ASSERT_EQ(mdb_drop(t.get(), ballast, 0), 0);
  ASSERT_EQ(t.commit(), 0);
}

// A message a peer pushed while this CCN's disk was full is kept and stored once there is room,
// even if that peer is gone by then (with direct peers, as in `alephd dev` and the in-process
// simulator, as with endpoints).
TEST_F(ccn_peer_test, a_message_pushed_while_the_disk_was_full_is_stored_once_there_is_room) {
  auto a = make("ccn-a");
  auto b = make("ccn-b", {a->node});
  sched.run();
  auto ballast = fill_store(*b->env);
  ASSERT_TRUE(ask<append_result>(a->messages, atom::append_v, msg("while-full", "ccn-a")).value);
  sched.run();
  EXPECT_FALSE(has_message(*b, hash_of("while-full"))) << "B's disk is full";
  EXPECT_EQ(state_of<ccn_peer_state>(b->peer).held_messages.size(), 1u);
  auto held = state_of<ccn_peer_state>(b->peer).held_bytes;
  EXPECT_GT(held, 0u);
  // A pushes it again (as a catch-up would): kept once.
  caf::anon_send(b->peer, atom::replicate_v, msg("while-full", "ccn-a"));
  advance(std::chrono::seconds{3}); // still full: kept, tried again
  EXPECT_FALSE(has_message(*b, hash_of("while-full")));
  EXPECT_EQ(state_of<ccn_peer_state>(b->peer).held_messages.size(), 1u);
  EXPECT_EQ(state_of<ccn_peer_state>(b->peer).held_bytes, held);
  EXPECT_FALSE(state_of<ccn_peer_state>(b->peer).storing_held) << "each round ends";
  // A goes; room again: B stores what it kept.
  caf::anon_send_exit(a->peer, caf::exit_reason::kill);
  caf::anon_send_exit(a->node, caf::exit_reason::kill);
  sched.run();
  free_store(*b->env, ballast);
  for (int i = 0; i < 5 && !has_message(*b, hash_of("while-full")); ++i)
    advance(std::chrono::seconds{1});
  EXPECT_TRUE(has_message(*b, hash_of("while-full")));
  EXPECT_TRUE(state_of<ccn_peer_state>(b->peer).held_messages.empty());
  EXPECT_EQ(state_of<ccn_peer_state>(b->peer).held_bytes, 0u);
  EXPECT_FALSE(state_of<ccn_peer_state>(b->peer).behind);
}

// With no room to keep what could not be stored, the CCN asks its peers again later.
TEST_F(ccn_peer_test, what_cannot_be_kept_is_asked_of_the_peers_again) {
  auto a = make("ccn-a");
  auto b = make("ccn-b", {a->node}, 16); // keeps nothing
  sched.run();
  auto ballast = fill_store(*b->env);
  ASSERT_TRUE(ask<append_result>(a->messages, atom::append_v, msg("while-full", "ccn-a")).value);
  sched.run();
  EXPECT_FALSE(has_message(*b, hash_of("while-full")));
  EXPECT_TRUE(state_of<ccn_peer_state>(b->peer).held_messages.empty());
  EXPECT_TRUE(state_of<ccn_peer_state>(b->peer).behind);
  free_store(*b->env, ballast);
  for (int i = 0; i < 10 && !has_message(*b, hash_of("while-full")); ++i)
    advance(std::chrono::seconds{1});
  EXPECT_TRUE(has_message(*b, hash_of("while-full")));
  EXPECT_FALSE(state_of<ccn_peer_state>(b->peer).behind);
}

// A pushed file that can never be stored (its bytes do not match its hash) is not kept for
// retries: the peers are asked again instead.
TEST_F(ccn_peer_test, what_can_never_be_stored_is_not_kept) {
  auto a = make("ccn-a");
  auto b = make("ccn-b", {a->node});
  sched.run();
  caf::anon_send(b->peer, atom::replicate_v, file_blob{std::string(64, 'a'), "not those bytes"});
  sched.run();
  EXPECT_TRUE(state_of<ccn_peer_state>(b->peer).held_files.empty());
  EXPECT_EQ(state_of<ccn_peer_state>(b->peer).held_bytes, 0u);
  EXPECT_TRUE(state_of<ccn_peer_state>(b->peer).behind);
}

TEST_F(ccn_peer_test, replicated_items_are_not_echoed_back) {
  auto a = make("ccn-a");
  auto b = make("ccn-b", {a->node});
  sched.run();
  ASSERT_TRUE(ask<append_result>(a->messages, atom::append_v, msg("once", "ccn-a")).value);
  ASSERT_TRUE(ask<file_info>(a->files, atom::put_v, std::string{"once"}).value);
  sched.run();
  ASSERT_TRUE(has_message(*b, hash_of("once")));
  // A committed exactly once: B did not send the message back.
  EXPECT_EQ(state_of<message_store_state>(a->messages).commits, 1u);
  EXPECT_EQ(ask<std::vector<std::string>>(b->files, atom::inventory_v).value->size(), 1u);
}

TEST_F(ccn_peer_test, a_forged_replicated_message_is_refused) {
  auto a = make("ccn-a");
  auto forged = msg("real", "ccn-x");
  forged.item_hash = std::string(64, 'a'); // does not match the content
  caf::anon_send(a->peer, atom::replicate_v, forged);
  auto garbage = msg("x", "ccn-x");
  garbage.json = "{\"not\": \"a message\"}";
  garbage.item_hash = hash_of("garbage");
  caf::anon_send(a->peer, atom::replicate_v, garbage);
  sched.run();
  // Well formed, but not signed by its sender's wallet; and unsigned.
  auto other = msg("signed by someone else", "ccn-x", std::string(31, '\0') + "\x2b");
  caf::anon_send(a->peer, atom::replicate_v, other);
  auto bare = msg("unsigned", "ccn-x");
  auto doc = nlohmann::json::parse(bare.json);
  doc.erase("signature");
  bare.json = doc.dump();
  caf::anon_send(a->peer, atom::replicate_v, bare);
  sched.run();
  EXPECT_FALSE(has_message(*a, forged.item_hash));
  EXPECT_FALSE(has_message(*a, garbage.item_hash));
  EXPECT_FALSE(has_message(*a, other.item_hash));
  EXPECT_FALSE(has_message(*a, bare.item_hash));
  // A valid one from the same peer is stored.
  caf::anon_send(a->peer, atom::replicate_v, msg("valid", "ccn-x"));
  sched.run();
  EXPECT_TRUE(has_message(*a, hash_of("valid")));
}

TEST_F(ccn_peer_test, list_shows_peers_and_marks_a_dead_one_down) {
  auto a = make("ccn-a");
  auto b = make("ccn-b", {a->node});
  sched.run();
  auto peers = ask<std::vector<node_view>>(a->peer, atom::list_v);
  ASSERT_TRUE(peers.value);
  ASSERT_EQ(peers.value->size(), 1u);
  EXPECT_EQ(peers.value->at(0).id, "ccn-b");
  EXPECT_EQ(peers.value->at(0).status, "active");
  caf::anon_send_exit(b->peer, caf::exit_reason::kill);
  sched.run();
  peers = ask<std::vector<node_view>>(a->peer, atom::list_v);
  EXPECT_EQ(peers.value->at(0).status, "down");
  // Nothing is pushed to a dead peer, and local appends still work.
  EXPECT_TRUE(ask<append_result>(a->messages, atom::append_v, msg("after", "ccn-a")).value);
}

} // namespace

} // namespace ccn_peer_tests
