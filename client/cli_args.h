// Argument parsing of the `atman` tool (client/cli.h): the option table of every sub-command,
// the usage text printed from it, ParseArgs (argv -> ParsedArgs), and the typed readers of one
// flag's value (integers, numbers, lists, choices, durations, a file a flag names), whose errors
// name the flag and the limit. client/cli_options.h and client/cli_requests.h build on these.
//
// Ownership: values in, values out; nothing is kept. Thread safety: reentrant (the option
// tables are immutable).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace atman::client {

// Parsed options of one sub-command, in command-line order ("--x=v" and "--x v" both work;
// switches get the value "true").
struct ParsedArgs {
  std::string command;
  std::vector<std::pair<std::string, std::string>> options;

  bool Has(const std::string& name) const;
  // The last value given for `name`, or `fallback`.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
};

// Whether `name` is a sub-command (explain, generate, tokenize, info, health, bench, soak).
bool IsCliCommand(const std::string& name);

// Parses `args` (first the sub-command). Errors (INVALID_ARGUMENT): unknown command, unknown
// option for the command, a value missing, a switch given a value.
absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args);

// The usage text (all commands), or one command's.
std::string Usage(const std::string& command = "");

// INVALID_ARGUMENT "--<flag> <value>: <why>".
absl::Status InvalidFlag(const std::string& flag, const std::string& value, const std::string& why);

// The value of `flag` as an integer in [lo, hi].
absl::StatusOr<int64_t> IntFlag(const ParsedArgs& args, const std::string& flag, int64_t lo,
                                int64_t hi);

// The value of `flag` as a finite number.
absl::StatusOr<double> DoubleFlag(const ParsedArgs& args, const std::string& flag);

// `value` of `flag` as a non-empty comma-separated list of integers.
absl::StatusOr<std::vector<int32_t>> IntListFlag(const std::string& flag, const std::string& value);

// Looks `value` of `flag` up in `names` (value -> enum number).
template <typename Enum>
absl::StatusOr<Enum> ChoiceFlag(const std::string& flag, const std::string& value,
                                const std::vector<std::pair<std::string, Enum>>& names) {
  std::vector<std::string> known;
  for (const auto& [name, e] : names) {
    if (name == value) return e;
    known.push_back(name);
  }
  return InvalidFlag(flag, value, absl::StrCat("expected one of ", absl::StrJoin(known, ", ")));
}

// "30s", "500ms", "2m", "1h" or a bare number of seconds.
absl::StatusOr<std::chrono::milliseconds> ParseDurationFlag(const std::string& flag,
                                                            const std::string& value);

// The bytes of the file at `path` that `flag` names. NOT_FOUND (naming the flag) when it is not
// a regular file or cannot be read.
absl::StatusOr<std::string> ReadFlagFile(const std::string& flag, const std::string& path);

}  // namespace atman::client
