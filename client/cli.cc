#include "client/cli.h"

#include <exception>

namespace atman::client {
namespace {

// Usage and help first, then the flags, the connection options and the sub-command.
int Run(const std::vector<std::string>& argv, const CliEnvironment& environment, std::ostream& out,
        std::ostream& err) {
  if (argv.empty()) {
    err << Usage();
    return kExitUsage;
  }
  if (argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") {
    out << Usage(argv.size() > 1 ? argv[1] : "");
    return kExitOk;
  }
  auto args = ParseArgs(argv);
  if (!args.ok()) return UsageError(args.status(), IsCliCommand(argv[0]) ? argv[0] : "", err);
  if (args->Has("help")) {
    out << Usage(args->command);
    return kExitOk;
  }
  auto client_options = ClientOptionsFromArgs(*args, environment);
  if (!client_options.ok()) return UsageError(client_options.status(), args->command, err);
  if (args->command == "bench") return RunBenchCommand(*args, *client_options, out, err);
  if (args->command == "soak") return RunSoakCommand(*args, *client_options, out, err);
  auto client = Client::Create(*client_options);
  if (!client.ok()) return UsageError(client.status(), args->command, err);
  if (args->command == "explain") return RunExplainCommand(*args, **client, environment, out, err);
  if (args->command == "generate") return RunGenerateCommand(*args, **client, out, err);
  if (args->command == "tokenize") return RunTokenizeCommand(*args, **client, out, err);
  if (args->command == "info") return RunInfoCommand(*args, **client, out, err);
  return RunHealthCommand(*args, **client, out, err);
}

}  // namespace

int RunCli(const std::vector<std::string>& args, const CliEnvironment& environment,
           std::ostream& out, std::ostream& err) {
  try {
    return Run(args, environment, out, err);
  } catch (const std::exception& e) {
    err << "atman: internal error: " << e.what() << "\n";
  } catch (...) {
    err << "atman: internal error\n";
  }
  return kExitFailure;
}

}  // namespace atman::client
