// Exact tests of the local APIC model (models/lapic.h): IRR/ISR priority
// classes, EOI, and the TSC-deadline timer (SDM Vol. 3A, 10.8 and 10.5.4.1).
#include "models/lapic.h"

#include <catch2/catch.hpp>

#include <cstdint>

using vmx::models::Lapic;

TEST_CASE("nothing requested: nothing deliverable", "[lapic]") {
  Lapic a;
  CHECK(a.deliverable() == -1);
  CHECK_FALSE(a.any_requested());
  a.eoi();  // EOI with nothing in service is harmless
  CHECK(a.deliverable() == -1);
}

TEST_CASE("the highest requested vector is delivered first", "[lapic]") {
  Lapic a;
  a.raise(0x31);
  a.raise(0x3F);
  a.raise(0x20);
  CHECK(a.any_requested());
  CHECK(a.deliverable() == 0x3F);
  a.acknowledge(0x3F);
  // 0x31 is in the same priority class (3) as 0x3F in service: blocked.
  CHECK(a.deliverable() == -1);
  CHECK(a.any_requested());
  a.eoi();
  CHECK(a.deliverable() == 0x31);
}

TEST_CASE("only a higher priority class interrupts the vector in service", "[lapic]") {
  Lapic a;
  a.raise(0x45);
  a.acknowledge(0x45);
  CHECK_FALSE(a.any_requested());
  CHECK(a.deliverable() == -1);

  a.raise(0x40);  // same class 4
  CHECK(a.deliverable() == -1);
  a.raise(0x4F);  // same class, higher vector: still blocked
  CHECK(a.deliverable() == -1);
  a.raise(0x3F);  // lower class
  CHECK(a.deliverable() == -1);
  a.raise(0x50);  // class 5 > 4
  CHECK(a.deliverable() == 0x50);

  // Nesting: 0x50 in service over 0x45; EOI retires the highest (0x50).
  a.acknowledge(0x50);
  CHECK(a.deliverable() == -1);
  a.eoi();
  CHECK(a.deliverable() == -1);  // 0x45 is still in service; 0x4F is class 4
  a.eoi();                       // retires 0x45
  CHECK(a.deliverable() == 0x4F);
  a.acknowledge(0x4F);
  a.eoi();
  CHECK(a.deliverable() == 0x40);
  a.acknowledge(0x40);
  a.eoi();
  CHECK(a.deliverable() == 0x3F);
}

TEST_CASE("a vector raised while in service is delivered after its EOI", "[lapic]") {
  Lapic a;
  a.raise(0xEC);
  a.acknowledge(0xEC);
  a.raise(0xEC);
  CHECK(a.any_requested());
  CHECK(a.deliverable() == -1);
  a.eoi();
  CHECK(a.deliverable() == 0xEC);
  a.acknowledge(0xEC);
  CHECK_FALSE(a.any_requested());
}

TEST_CASE("TSC-deadline timer fires once at or after the deadline", "[lapic][timer]") {
  Lapic a;
  CHECK(a.deadline() == Lapic::kNoDeadline);
  CHECK(a.deadline_msr() == 0);
  CHECK(a.lvt_timer() == Lapic::kDefaultTimerVector);

  a.set_deadline(1000);
  CHECK(a.deadline() == 1000);
  CHECK(a.deadline_msr() == 1000);
  CHECK_FALSE(a.tick(999));
  CHECK_FALSE(a.any_requested());

  const std::uint64_t now = GENERATE(as<std::uint64_t>{}, 1000, 1001, 5000);
  CAPTURE(now);
  CHECK(a.tick(now));
  CHECK(a.deliverable() == Lapic::kDefaultTimerVector);
  // Disarmed by firing: the MSR reads 0 and it does not fire again.
  CHECK(a.deadline() == Lapic::kNoDeadline);
  CHECK(a.deadline_msr() == 0);
  CHECK_FALSE(a.tick(now + 1));
  CHECK_FALSE(a.tick(1'000'000'000));
  a.acknowledge(Lapic::kDefaultTimerVector);
  CHECK_FALSE(a.any_requested());
}

TEST_CASE("TSC-deadline timer: writing 0 disarms, rewriting re-arms", "[lapic][timer]") {
  Lapic a;
  a.set_deadline(500);
  a.set_deadline(0);
  CHECK(a.deadline() == Lapic::kNoDeadline);
  CHECK(a.deadline_msr() == 0);
  CHECK_FALSE(a.tick(500));
  CHECK_FALSE(a.tick(1'000'000));
  CHECK_FALSE(a.any_requested());

  a.set_deadline(2000);
  a.set_deadline(3000);  // a later write replaces the deadline
  CHECK_FALSE(a.tick(2500));
  CHECK(a.tick(3000));
  CHECK(a.deliverable() == Lapic::kDefaultTimerVector);
}

TEST_CASE("LVT timer entry: vector and mask (bit 16)", "[lapic][timer]") {
  Lapic a;
  SECTION("programmed vector") {
    a.set_lvt_timer(0x41);
    a.set_deadline(10);
    CHECK(a.tick(10));
    CHECK(a.deliverable() == 0x41);
  }
  SECTION("masked: fires and disarms without raising") {
    a.set_lvt_timer((1u << 16) | 0x41);
    CHECK(a.lvt_timer() == 0x10041);
    a.set_deadline(10);
    CHECK(a.tick(10));
    CHECK_FALSE(a.any_requested());
    CHECK(a.deliverable() == -1);
    CHECK(a.deadline_msr() == 0);
    CHECK_FALSE(a.tick(11));
  }
}
