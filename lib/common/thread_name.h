#pragma once

#include <pthread.h>

#include <string>

namespace imgw {

// Names the calling thread, as `top -H`, `ps -L` and perf show it (Linux keeps 15 bytes; a
// longer name is cut). Threads imgw starts are named "imgw-<role>"; gRPC's keep theirs.
inline void NameThisThread(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace imgw
