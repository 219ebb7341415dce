#pragma once

#include <cstdint>

// A SQLite VFS that counts the syncs (fsync/fdatasync) of every file, wrapping the default one
// and made the default for the whole process: what a test measures durability by. Thread-safe
// counting; install it before opening any connection.
namespace imgw::queue::testing {

// Installs the VFS (once; later calls do nothing). False when SQLite refused it.
bool InstallSyncCountingVfs();
// Syncs since the process started, on files opened after InstallSyncCountingVfs().
int64_t SyncCount();

}  // namespace imgw::queue::testing
