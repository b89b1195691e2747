// The same-page merging scanner's trees (hypervisor/ksm.h): a binary search
// tree of pages ordered by their contents, read through a compare callback.
// Here "frames" are indices into a table of fake page contents.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <random>
#include <vector>

#include "hypervisor/ksm.h"

using vmx::hv::ContentTree;

namespace {

struct FakeMemory {
  std::map<std::uint64_t, std::vector<std::uint64_t>> pages;  // frame -> quadwords
  unsigned compares = 0;
  int compare(std::uint64_t a, std::uint64_t b) {
    ++compares;
    const auto& x = pages.at(a);
    const auto& y = pages.at(b);
    for (std::size_t i = 0; i < x.size(); ++i)
      if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
  }
  ContentTree::Compare cmp() {
    return [this](std::uint64_t a, std::uint64_t b) { return compare(a, b); };
  }
};

std::vector<std::uint64_t> page_of(std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<std::uint64_t> p(8);
  for (auto& w : p) w = g();
  return p;
}

}  // namespace

TEST_CASE("content tree: an equal page is found, a different one is not", "[ksm]") {
  FakeMemory m;
  ContentTree t;
  for (std::uint64_t f = 1; f <= 50; ++f) {
    m.pages[f] = page_of(f);
    auto [n, inserted] = t.find_or_insert({f, 0, f * 4096, true}, m.cmp());
    CHECK(inserted);
    CHECK(t.at(n).frame == f);
  }
  CHECK(t.size() == 50);
  // A copy of page 17 in another frame finds frame 17.
  m.pages[1000] = page_of(17);
  const int n = t.find(1000, m.cmp());
  REQUIRE(n >= 0);
  CHECK(t.at(n).frame == 17);
  // find_or_insert of the copy returns the existing node, inserts nothing.
  auto [n2, inserted] = t.find_or_insert({1000, 1, 0, true}, m.cmp());
  CHECK_FALSE(inserted);
  CHECK(n2 == n);
  CHECK(t.size() == 50);
  // A page with new contents is not found.
  m.pages[1001] = page_of(999);
  CHECK(t.find(1001, m.cmp()) == -1);
  // Random contents keep the tree shallow: far fewer compares than nodes.
  m.compares = 0;
  t.find(1001, m.cmp());
  CHECK(m.compares >= 1);
  CHECK(m.compares <= t.depth());  // one compare per level visited
  CHECK(t.depth() < 20);
}

TEST_CASE("content tree: in-order visit is in content order", "[ksm]") {
  FakeMemory m;
  ContentTree t;
  for (std::uint64_t f = 1; f <= 64; ++f) {
    m.pages[f] = page_of(f * 7);
    t.insert({f, 0, 0, true}, m.cmp());
  }
  std::vector<std::uint64_t> order;
  t.in_order([&](int, const ContentTree::Entry& e) { order.push_back(e.frame); });
  REQUIRE(order.size() == 64);
  for (std::size_t i = 1; i < order.size(); ++i) CHECK(m.compare(order[i - 1], order[i]) < 0);
}

TEST_CASE("content tree: equal contents several times (max_page_sharing) are told apart by the predicate", "[ksm]") {
  FakeMemory m;
  ContentTree t;
  for (std::uint64_t f = 1; f <= 20; ++f) {
    m.pages[f] = page_of(f);
    t.insert({f, 0, 0, true}, m.cmp());
  }
  // Three frames with the same contents (a full merged frame and its siblings).
  m.pages[101] = page_of(5);
  m.pages[102] = page_of(5);
  t.insert({101, 0, 0, true}, m.cmp());
  t.insert({102, 0, 0, true}, m.cmp());
  m.pages[500] = page_of(5);
  // Without a predicate: the first on the search path (the oldest, frame 5).
  CHECK(t.at(t.find(500, m.cmp())).frame == 5);
  // Refusing frames 5 and 101 ("full"): the search goes right to 102.
  auto not_full = [](const ContentTree::Entry& e) { return e.frame != 5 && e.frame != 101; };
  const int n = t.find(500, m.cmp(), not_full);
  REQUIRE(n >= 0);
  CHECK(t.at(n).frame == 102);
  // All refused: none.
  CHECK(t.find(500, m.cmp(), [](const ContentTree::Entry&) { return false; }) == -1);
}

TEST_CASE("content tree: erasing keeps every other node findable under its index", "[ksm]") {
  FakeMemory m;
  ContentTree t;
  std::map<std::uint64_t, int> node_of;
  for (std::uint64_t f = 1; f <= 200; ++f) {
    m.pages[f] = page_of(f + 1000);
    node_of[f] = t.insert({f, 0, 0, true}, m.cmp());
  }
  // Erase every third frame, in an order that hits leaves, one-child and
  // two-child nodes, and the root.
  std::vector<std::uint64_t> gone;
  for (std::uint64_t f = 3; f <= 200; f += 3) gone.push_back(f);
  std::shuffle(gone.begin(), gone.end(), std::mt19937_64(7));
  for (std::uint64_t f : gone) t.erase(node_of.at(f));
  CHECK(t.size() == 200 - gone.size());
  for (std::uint64_t f = 1; f <= 200; ++f) {
    const int n = t.find(f, m.cmp());
    if (f % 3 == 0) {
      CHECK(n == -1);
    } else {
      REQUIRE(n >= 0);
      CHECK(n == node_of.at(f));
      CHECK(t.at(n).frame == f);
    }
  }
  std::vector<std::uint64_t> order;
  t.in_order([&](int, const ContentTree::Entry& e) { order.push_back(e.frame); });
  REQUIRE(order.size() == t.size());
  for (std::size_t i = 1; i < order.size(); ++i) CHECK(m.compare(order[i - 1], order[i]) < 0);
  // Freed nodes are reused; clear empties the tree.
  m.pages[999] = page_of(424242);
  t.insert({999, 0, 0, true}, m.cmp());
  CHECK(t.find(999, m.cmp()) >= 0);
  t.clear();
  CHECK(t.size() == 0);
  CHECK(t.depth() == 0);
  CHECK(t.find(999, m.cmp()) == -1);
}

TEST_CASE("content tree: a dead unstable entry still steers but is not matched", "[ksm]") {
  FakeMemory m;
  ContentTree t;
  for (std::uint64_t f = 1; f <= 10; ++f) {
    m.pages[f] = page_of(f);
    t.insert({f, 0, f, true}, m.cmp());
  }
  auto live = [](const ContentTree::Entry& e) { return e.live; };
  m.pages[77] = page_of(4);
  const int n = t.find(77, m.cmp(), live);
  REQUIRE(n >= 0);
  t.at(n).live = false;  // merged: out of the unstable tree's matches
  CHECK(t.find(77, m.cmp(), live) == -1);
  // The next equal page is inserted beside it and found from then on.
  auto [n2, inserted] = t.find_or_insert({77, 1, 0, true}, m.cmp(), live);
  CHECK(inserted);
  m.pages[78] = page_of(4);
  CHECK(t.find(78, m.cmp(), live) == n2);
}
