// The `atman` command-line tool (client/main.cc is only its entry point): sub-commands
// explain, generate, tokenize, info, health, bench and soak over atman::client::Client, with the
// flags documented in docs/cli.md and printed by `atman --help`.
//
// Exit codes: 0 success; 1 the server answered an error or an output file could not be
// written (message on stderr); 2 bad usage: unknown command or option, a missing or malformed
// value, an input file that is missing or unreadable, an image that does not decode (usage
// message on stderr). `atman health` exits 1 when the service is not SERVING; `atman soak`
// exits 1 when its verdict fails (client/soak.h).
//
// Ownership: arguments and streams are borrowed for the call. Thread safety: reentrant.
#pragma once

#include <chrono>
#include <map>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"
#include "client/atman_client.h"
#include "client/soak.h"

namespace atman::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// What the tool reads from the environment (passed in so that tests control it).
struct CliEnvironment {
  std::string colorterm;  // COLORTERM
  std::string address;    // ATMAN_ADDRESS (default of --address)
  std::string token;      // ATMAN_TOKEN (default of --token)
};

// Runs `atman <args...>` (args excludes the program name). Never throws.
int RunCli(const std::vector<std::string>& args, const CliEnvironment& environment,
           std::ostream& out, std::ostream& err);

// Parsed options of one sub-command, in command-line order ("--x=v" and "--x v" both work;
// switches get the value "true").
struct ParsedArgs {
  std::string command;
  std::vector<std::pair<std::string, std::string>> options;

  bool Has(const std::string& name) const;
  // The last value given for `name`, or `fallback`.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
};

// Parses `args` (first the sub-command). Errors (INVALID_ARGUMENT): unknown command, unknown
// option for the command, a value missing, a switch given a value.
absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args);

// The request of `atman explain` from its parsed options (prompt items in command-line order;
// image files read). Errors name the flag: INVALID_ARGUMENT for bad values, NOT_FOUND for a
// missing file, and an image that does not decode.
absl::StatusOr<pb::ExplainRequest> ExplainRequestFromArgs(const ParsedArgs& args);

// The options of `atman soak` from its parsed flags (defaults for the flags left out), checked
// by ValidateSoakOptions. Errors (INVALID_ARGUMENT) name the flag.
absl::StatusOr<SoakOptions> SoakOptionsFromArgs(const ParsedArgs& args);

// "30s", "500ms", "2m", "1h" or a bare number of seconds.
absl::StatusOr<std::chrono::milliseconds> ParseDurationFlag(const std::string& flag,
                                                            const std::string& value);

// The client options from --address, --timeout, --retries, --tls*, --token, --token-file.
absl::StatusOr<ClientOptions> ClientOptionsFromArgs(const ParsedArgs& args,
                                                    const CliEnvironment& environment);

// The usage text (all commands), or one command's.
std::string Usage(const std::string& command = "");

}  // namespace atman::client
