// `atman`: the command-line client of atman-server (see client/cli.h and docs/cli.md).
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "client/cli.h"

int main(int argc, char** argv) {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v == nullptr ? "" : v);
  };
  atman::client::CliEnvironment environment{env("COLORTERM"), env("ATMAN_ADDRESS"),
                                            env("ATMAN_TOKEN")};
  std::vector<std::string> args(argv + 1, argv + argc);
  return atman::client::RunCli(args, environment, std::cout, std::cerr);
}
