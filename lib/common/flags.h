#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace imgw {

// The command line of an imgw program: its Abseil flags, set by this parser rather than
// Abseil's, so that every usage error is one line naming the flag and exit status 2 (Abseil's
// prints its own message and exits 1), and --help lists the program's own flags.

struct CommandLine {
  std::vector<std::string> positional;  // The arguments that are not flags, in order.
  bool help = false;                    // --help, --helpfull or --helpshort.
};

// Parses `args` (argv without argv[0]) and sets the flags they name, as Abseil does:
// --name=value, --name value, a single dash too; --name and --noname for a bool; "--" ends the
// flags; --flagfile=F[,G] reads each file's lines in place, one flag per line ('#' comments and
// blank lines skipped), nested at most 8 deep, at most 1 MiB each and 64 in all. Errors:
// "--name: what is wrong" (an unknown flag, a value that does not parse, a missing value or
// file). Flags set before an error keep their value.
absl::StatusOr<CommandLine> ParseFlags(const std::vector<std::string>& args);

// `usage`, then each flag defined in a file whose path ends with one of `files`, by name, with
// its help and default.
std::string FlagsHelp(absl::string_view usage, const std::vector<std::string>& files);

// For main(): parses argv. On an error prints "<program>: <error>" to stderr and exits 2; on
// --help prints FlagsHelp(usage, files) to stdout and exits 0. Returns the positional
// arguments.
std::vector<std::string> ParseFlagsOrExit(int argc, char** argv, absl::string_view program,
                                          absl::string_view usage,
                                          const std::vector<std::string>& files);

}  // namespace imgw
