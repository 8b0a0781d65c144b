// The sub-commands of the `atman` tool, one function each: they take the parsed flags
// (client/cli_args.h), build the request (client/cli_requests.h) or options
// (client/cli_options.h), call the server and print the result on `out` (explain: the terminal
// heatmap or --json, and the --html / --png files; generate, tokenize, info, health: the
// response as text or --json; bench: its JSON or CSV report; soak: its table and --json file),
// progress and diagnostics on `err`. Each returns the tool's exit code (client/cli.h).
//
// Ownership: arguments, the client and the streams are borrowed for the call; bench and soak
// create their own clients (retries off). Thread safety: reentrant.
#pragma once

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "client/atman_client.h"
#include "client/cli_args.h"
#include "client/cli_options.h"

namespace atman::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// The usage error exit: "atman: <message>" and a blank line, then the command's usage, on
// `err`; returns kExitUsage.
int UsageError(const absl::Status& status, const std::string& command, std::ostream& err);

int RunExplainCommand(const ParsedArgs& args, const Client& client,
                      const CliEnvironment& environment, std::ostream& out, std::ostream& err);
int RunGenerateCommand(const ParsedArgs& args, const Client& client, std::ostream& out,
                       std::ostream& err);
int RunTokenizeCommand(const ParsedArgs& args, const Client& client, std::ostream& out,
                       std::ostream& err);
int RunInfoCommand(const ParsedArgs& args, const Client& client, std::ostream& out,
                   std::ostream& err);
// Exits 1 when the service is not SERVING.
int RunHealthCommand(const ParsedArgs& args, const Client& client, std::ostream& out,
                     std::ostream& err);
// Bench and soak refuse a non-loopback --address unless --allow-remote is given.
int RunBenchCommand(const ParsedArgs& args, const ClientOptions& client_options, std::ostream& out,
                    std::ostream& err);
// Exits 1 when the soak's verdict fails.
int RunSoakCommand(const ParsedArgs& args, const ClientOptions& client_options, std::ostream& out,
                   std::ostream& err);

}  // namespace atman::client
