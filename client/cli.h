// The `atman` command-line tool (client/main.cc is only its entry point): sub-commands
// explain, generate, tokenize, info, health, bench and soak over atman::client::Client, with the
// flags documented in docs/cli.md and printed by `atman --help`. RunCli parses the arguments
// (client/cli_args.h), builds the connection options (client/cli_options.h) and runs the
// sub-command (client/cli_commands.h, which builds its request with client/cli_requests.h).
//
// Exit codes: 0 success; 1 the server answered an error or an output file could not be
// written (message on stderr); 2 bad usage: unknown command or option, a missing or malformed
// value, an input file that is missing or unreadable, an image that does not decode (usage
// message on stderr). `atman health` exits 1 when the service is not SERVING; `atman soak`
// exits 1 when its verdict fails (client/soak.h).
//
// Ownership: arguments and streams are borrowed for the call. Thread safety: reentrant.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "client/cli_args.h"
#include "client/cli_commands.h"
#include "client/cli_options.h"
#include "client/cli_requests.h"

namespace atman::client {

// Runs `atman <args...>` (args excludes the program name). Never throws.
int RunCli(const std::vector<std::string>& args, const CliEnvironment& environment,
           std::ostream& out, std::ostream& err);

}  // namespace atman::client
