#pragma once

#include <sqlite3.h>

#include <cstdint>

// The queue's SQLite VFS: the platform's default VFS ("unix"), except that a WAL file gathers
// what SQLite writes to it in one buffer and hands it to the kernel in one write.
//
// Why: SQLite writes each WAL frame as two pwrite calls (its header, then the page). A
// transaction of 20 new pairs dirties about 25 pages, so 50 system calls, and on this 2-core
// VM a pwrite costs ~7 µs of CPU whatever its size: 43% of an Enqueue's CPU went there
// (perf, bench/micro BM_SqliteEnqueue). Contiguous writes are the norm in a WAL: frames are
// appended. So this VFS appends them to a buffer, and writes the buffer out (one pwrite):
//   - at xSync, which SQLite calls at every commit under synchronous=FULL, before the commit
//     becomes visible: a write that fails there fails the commit (SQLite rolls it back), so
//     a commit is never reported done with its frames outside the file;
//   - before any read, size query, truncation or file control of the WAL, on close, when a
//     write is not contiguous with the buffer, and when the buffer is full.
// The database file and every other file are the default VFS's, untouched.
//
// The store then runs with synchronous=FULL and checkpoint_fullfsync=ON always, and chooses per
// transaction whether its commit reaches the disk (SetCommitSync): a commit's sync carries
// SQLITE_SYNC_NORMAL, a checkpoint's SQLITE_SYNC_FULL (checkpoint_fullfsync; on Linux both are
// one fdatasync), so a checkpoint always syncs the WAL and the database file as SQLite
// requires, while a commit without sync only reaches the kernel: it survives the process's
// death, not the machine's, like synchronous=NORMAL, and unlike NORMAL it is written before
// the commit returns.
namespace imgw::queue::sqlite {

// The VFS's name, registered on first use (thread-safe). Open databases with it
// (sqlite3_open_v2's last argument).
const char* BufferedWalVfs();

// Whether the commits of `db` (opened with BufferedWalVfs(), its WAL open: after the first
// transaction in WAL mode) fsync the WAL (true, the default) or only write it. False when the
// WAL is not one of this VFS's files, and nothing changed.
bool SetCommitSync(sqlite3* db, bool sync);

// What the WAL files of this VFS did in this process, for tests and benchmarks.
struct BufferedWalCounters {
  int64_t writes = 0;   // xWrite calls SQLite made
  int64_t flushes = 0;  // writes handed to the kernel
  int64_t syncs = 0;    // syncs handed to the kernel (every file of the VFS, the database too)
};
BufferedWalCounters ReadBufferedWalCounters();

}  // namespace imgw::queue::sqlite
