// FUZZ_CHECK(condition): the property a fuzz target asserts about a result. A violation prints
// the condition and where it failed, then aborts, which libFuzzer (and the replay driver,
// tests/fuzz/replay_main.cc) report as a crash on that input. Unlike assert(), it is never
// compiled out.
#pragma once

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition)                                                                 \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (false)
