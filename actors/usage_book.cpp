#include "actors/usage_book.hpp"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "runtime/ledger.hpp"
#include "runtime/lmdb.hpp"

namespace alephd {

namespace {

struct head {
  uint64_t seq = 0;
  std::string hash;
};

head read_head(const lmdb::txn& t, unsigned db, const std::string& node) {
  head h;
  if (auto v = t.get(db, node)) {
    auto j = nlohmann::json::parse(*v, nullptr, false);
    if (j.is_object() && j.value("seq", uint64_t{0}) > 0) {
      h.seq = j.value("seq", uint64_t{0});
      h.hash = j.value("hash", std::string{});
    }
  }
  return h;
}

} // namespace

usage_book_actor::behavior_type
usage_book(usage_book_actor::stateful_pointer<usage_book_state> self, std::shared_ptr<lmdb::env> env) {
  auto& st = self->state;
  st.env = std::move(env);
  std::string err;
  MDB_dbi entries = 0, heads = 0;
  if (!st.env || !st.env->open_db("usage", entries, err) || !st.env->open_db("usage.heads", heads, err)) {
    self->quit(make_error(ec::invalid, "usage_book: " + (st.env ? err : "no LMDB environment")));
    return usage_book_actor::behavior_type::make_empty_behavior();
  }
  st.entries = entries;
  st.heads = heads;
  return {
    [=](atom::usage, const std::string& node,
        const std::vector<usage_entry>& batch) -> caf::result<uint64_t> {
      auto& st = self->state;
      if (node.empty() || node.find('\0') != std::string::npos)
        return make_error(ec::invalid, "usage: malformed node id");
      lmdb::txn t{*st.env, true};
      if (t.status() != 0)
        return make_error(ec::unavailable, "usage: " + lmdb::error_text(t.status()));
      auto h = read_head(t, st.heads, node);
      uint64_t added = 0;
      for (auto& e : batch) {
        if (e.node != node) {
          spdlog::warn("usage_book: {} sent an entry of another node; batch stopped", node);
          break;
        }
        if (auto why = ledger_entry_problem(e); !why.empty()) {
          spdlog::warn("usage_book: entry {} of {} refused: {}", e.seq, node, why);
          break;
        }
        if (h.seq > 0 && e.seq <= h.seq) {
          // Held already (an acknowledgement was lost) — unless it differs from what is held.
          auto held = t.get(st.entries, usage_key(node, e.seq));
          auto old = held ? ledger_decode(*held) : std::nullopt;
          if (old && old->hash != e.hash) {
            ++st.conflicts;
            spdlog::error("usage_book: entry {} of {} differs from the one held; batch stopped",
                          e.seq, node);
            break;
          }
          ++st.duplicates;
          continue;
        }
        // The next entry continues the chain; after a gap (entries another CCN received while
        // the CRN was linked there) or for a node new here, a segment starts: its own hash must
        // hold, and its successors must follow it.
        bool continues = h.seq > 0 && e.seq == h.seq + 1;
        usage_entry prev;
        prev.seq = continues ? h.seq : e.seq - 1;
        prev.hash = continues ? h.hash : e.prev;
        auto why = ledger_link_error(e.seq > 1 || continues ? &prev : nullptr, e);
        if (!why.empty()) {
          spdlog::warn("usage_book: entry {} of {} refused: {}", e.seq, node, why);
          break;
        }
        if (!continues && h.seq > 0) {
          ++st.segments;
          spdlog::info("usage_book: entries {} to {} of {} went to another CCN", h.seq + 1,
                       e.seq - 1, node);
        }
        if (int rc = t.put(st.entries, usage_key(node, e.seq), ledger_encode(e)); rc != 0)
          return make_error(ec::unavailable, "usage: " + lmdb::error_text(rc));
        h.seq = e.seq;
        h.hash = e.hash;
        ++added;
      }
      if (added > 0) {
        auto text = nlohmann::json{{"seq", h.seq}, {"hash", h.hash}}.dump();
        if (int rc = t.put(st.heads, node, text); rc != 0)
          return make_error(ec::unavailable, "usage: " + lmdb::error_text(rc));
        if (int rc = t.commit(); rc != 0)
          return make_error(ec::unavailable, "usage: " + lmdb::error_text(rc));
      }
      return h.seq;
    },
    [=](atom::list, const std::string& node, uint64_t after,
        uint32_t max) -> std::vector<usage_entry> {
      auto& st = self->state;
      std::vector<usage_entry> out;
      lmdb::txn t{*st.env, false};
      if (t.status() != 0)
        return out;
      MDB_cursor* cur = nullptr;
      if (mdb_cursor_open(t.get(), st.entries, &cur) != 0)
        return out;
      auto prefix = node + '\0';
      auto key = usage_key(node, after + 1);
      MDB_val k{key.size(), key.data()}, v{};
      for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && out.size() < max;
           rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        std::string_view ks{static_cast<const char*>(k.mv_data), k.mv_size};
        if (ks.substr(0, prefix.size()) != prefix)
          break;
        if (auto e = ledger_decode({static_cast<const char*>(v.mv_data), v.mv_size}))
          out.push_back(std::move(*e));
      }
      mdb_cursor_close(cur);
      return out;
    },
    [=](atom::status) {
      auto& st = self->state;
      std::map<std::string, uint64_t> out;
      lmdb::txn t{*st.env, false};
      if (t.status() == 0)
        t.for_each(st.heads, false, [&](std::string_view key, std::string_view) {
          out[std::string{key}] = read_head(t, st.heads, std::string{key}).seq;
          return true;
        });
      return out;
    },
  };
}

} // namespace alephd
