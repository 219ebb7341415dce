#include "lib/common/flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <utility>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "lib/common/files.h"

namespace imgw {
namespace {

constexpr int kMaxFlagfileDepth = 8;
// Flagfiles read in all: nesting alone does not bound them ("--flagfile=a,a" in each of 8 levels
// would read 256).
constexpr int kMaxFlagfiles = 64;

// On one line, whatever the peer typed.
std::string OneLine(absl::string_view text) {
  return absl::StrReplaceAll(text, {{"\n", "\\n"}, {"\r", "\\r"}});
}

absl::Status Error(absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("--", OneLine(name), ": ", what));
}

bool IsHelp(absl::string_view name) {
  return name == "help" || name == "helpfull" || name == "helpshort";
}

// Abseil's own flags whose work this parser does not do: refused rather than ignored.
bool IsUnsupported(absl::string_view name) {
  for (absl::string_view abseil : {"fromenv", "tryfromenv", "undefok", "helpon", "helpmatch",
                                   "helppackage", "only_check_args", "version"}) {
    if (name == abseil) return true;
  }
  return false;
}

// The flags of one flagfile: its lines, trimmed, without blank lines and '#' comments.
absl::StatusOr<std::vector<std::string>> ReadFlagfile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadBoundedFile("flagfile", path, kMaxTextFileBytes);
  if (!text.ok()) return text.status();
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (trimmed.empty() || trimmed[0] == '#') continue;
    lines.emplace_back(trimmed);
  }
  return lines;
}

class Parser {
 public:
  // `file`: the flagfile the arguments come from ("" for the command line).
  absl::Status Parse(const std::vector<std::string>& args, const std::string& file, int depth) {
    bool flags_ended = false;
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& arg = args[i];
      if (flags_ended || arg.size() < 2 || arg[0] != '-') {
        if (!file.empty()) {
          return Error("flagfile",
                       absl::StrCat(OneLine(file), ": \"", OneLine(arg), "\" is not a flag"));
        }
        line_.positional.push_back(arg);
        continue;
      }
      if (arg == "--") {
        flags_ended = true;
        continue;
      }
      absl::string_view body(arg);
      body.remove_prefix(arg[1] == '-' ? 2 : 1);
      const size_t eq = body.find('=');
      const std::string name(body.substr(0, eq));
      std::optional<std::string> value;
      if (eq != absl::string_view::npos) value = std::string(body.substr(eq + 1));
      if (name.empty())
        return absl::InvalidArgumentError(absl::StrCat("\"", OneLine(arg), "\" is not a flag"));
      if (IsHelp(name)) {
        line_.help = true;
        continue;
      }
      // "--flag value": the next argument is the value, as in Abseil.
      auto take_next = [&]() -> bool {
        if (i + 1 >= args.size()) return false;
        value = args[++i];
        return true;
      };
      if (name == "flagfile") {
        if (!value.has_value() && !take_next()) return Error(name, "missing value");
        if (absl::Status read = ReadFlagfiles(*value, depth); !read.ok()) return read;
        continue;
      }
      if (absl::Status set = Set(name, value, take_next); !set.ok()) return set;
    }
    return absl::OkStatus();
  }

  CommandLine& line() { return line_; }

 private:
  // --flagfile=a,b: each file's flags in turn, `depth` deep already.
  absl::Status ReadFlagfiles(const std::string& paths, int depth) {
    if (depth >= kMaxFlagfileDepth) return Error("flagfile", "nested more than 8 deep");
    for (absl::string_view path : absl::StrSplit(paths, ',', absl::SkipEmpty())) {
      if (++flagfiles_read_ > kMaxFlagfiles) return Error("flagfile", "more than 64 files read");
      absl::StatusOr<std::vector<std::string>> lines = ReadFlagfile(std::string(path));
      if (!lines.ok()) return lines.status();
      absl::Status status = Parse(*lines, std::string(path), depth + 1);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

  // Sets the flag `name` (or --noNAME for a bool) to `value`; without one, a bool is true and
  // any other flag takes the next argument (`take_next` puts it in `value`).
  absl::Status Set(const std::string& name, std::optional<std::string>& value,
                   absl::FunctionRef<bool()> take_next) {
    if (IsUnsupported(name)) return Error(name, "not supported by this program");
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    bool negated = false;
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      absl::CommandLineFlag* positive = absl::FindCommandLineFlag(name.substr(2));
      if (positive != nullptr && positive->IsOfType<bool>()) {
        flag = positive;
        negated = true;
      }
    }
    if (flag == nullptr || flag->IsRetired()) return Error(name, "unknown flag (see --help)");
    if (negated) {
      if (value.has_value()) return Error(name, "takes no value");
      value = "false";
    } else if (!value.has_value()) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (!take_next()) {
        return Error(name, "missing value");
      }
    }
    std::string error;
    if (flag->ParseFrom(*value, &error)) return absl::OkStatus();
    // Abseil says "Illegal value '...' specified for flag '...'; <why>": keep the why.
    const size_t why = error.find("; ");
    return Error(
        flag->Name(),
        absl::StrCat(
            "invalid value \"", OneLine(*value), "\"",
            why == std::string::npos ? "" : absl::StrCat(": ", OneLine(error.substr(why + 2)))));
  }

  CommandLine line_;
  int flagfiles_read_ = 0;
};

// `text` wrapped at `width` columns, each line indented by `indent`.
std::string Wrap(absl::string_view text, size_t indent, size_t width) {
  std::string out;
  size_t column = 0;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (column > 0 && column + 1 + word.size() > width) {
      out += "\n";
      column = 0;
    }
    if (column == 0) {
      out.append(indent, ' ');
      column = indent;
    } else {
      out += " ";
      ++column;
    }
    absl::StrAppend(&out, word);
    column += word.size();
  }
  return out + "\n";
}

}  // namespace

absl::StatusOr<CommandLine> ParseFlags(const std::vector<std::string>& args) {
  Parser parser;
  absl::Status status = parser.Parse(args, "", 0);
  if (!status.ok()) return status;
  return std::move(parser.line());
}

std::string FlagsHelp(absl::string_view usage, const std::vector<std::string>& files) {
  std::vector<absl::CommandLineFlag*> mine;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (flag->IsRetired()) continue;
    const std::string defined_in = flag->Filename();
    if (std::any_of(files.begin(), files.end(),
                    [&](const std::string& file) { return absl::EndsWith(defined_in, file); })) {
      mine.push_back(flag);
    }
  }
  std::sort(mine.begin(), mine.end(),
            [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) {
              return a->Name() < b->Name();
            });
  std::string out = absl::StrCat("usage: ", usage, "\n\nflags (default after =):\n");
  for (const absl::CommandLineFlag* flag : mine) {
    const std::string value = flag->DefaultValue();
    absl::StrAppend(&out, "  --", flag->Name(), "=",
                    flag->IsOfType<std::string>() ? absl::StrCat("\"", value, "\"") : value, "\n",
                    Wrap(flag->Help(), 6, 96));
  }
  absl::StrAppend(&out,
                  "  --flagfile=FILE[,FILE]\n      Flags, one per line, read in place ('#' "
                  "comments).\n  --help\n      This text.\n");
  return out;
}

std::vector<std::string> ParseFlagsOrExit(int argc, char** argv, absl::string_view program,
                                          absl::string_view usage,
                                          const std::vector<std::string>& files) {
  std::vector<std::string> args(argv + std::min(argc, 1), argv + argc);
  absl::StatusOr<CommandLine> line = ParseFlags(args);
  if (!line.ok()) {
    std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(program.size()), program.data(),
                 OneLine(line.status().message()).c_str());
    std::exit(2);
  }
  if (line->help) {
    std::fputs(FlagsHelp(usage, files).c_str(), stdout);
    std::exit(0);
  }
  return std::move(line->positional);
}

}  // namespace imgw
