// The options structs of the `atman` tool from its parsed flags (client/cli_args.h): the
// connection (ClientOptions, every command), `atman bench`'s load and report format, and
// `atman soak`'s options. Flags left out keep the structs' defaults; errors (INVALID_ARGUMENT,
// or NOT_FOUND for a missing file) name the flag.
//
// Ownership: values in, values out. Thread safety: reentrant.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "client/atman_client.h"
#include "client/bench.h"
#include "client/cli_args.h"
#include "client/soak.h"

namespace atman::client {

// What the tool reads from the environment (passed in so that tests control it).
struct CliEnvironment {
  std::string colorterm;  // COLORTERM
  std::string address;    // ATMAN_ADDRESS (default of --address)
  std::string token;      // ATMAN_TOKEN (default of --token)
};

// The client options from --address, --timeout, --retries, --load-balancing, --tls*, --token,
// --token-file (the files named are read and checked), checked by ValidateOptions.
absl::StatusOr<ClientOptions> ClientOptionsFromArgs(const ParsedArgs& args,
                                                    const CliEnvironment& environment);

// The options of `atman bench`: the load per level and the report's format.
struct BenchCommandOptions {
  BenchOptions load;            // --concurrency, --duration, --max-requests
  std::string format = "json";  // --format: json | csv
};

// `atman bench`'s options from its flags, the load checked by ValidateBenchOptions.
absl::StatusOr<BenchCommandOptions> BenchOptionsFromArgs(const ParsedArgs& args);

// The options of `atman soak` from its parsed flags (defaults for the flags left out), checked
// by ValidateSoakOptions.
absl::StatusOr<SoakOptions> SoakOptionsFromArgs(const ParsedArgs& args);

}  // namespace atman::client
