#include "lib/queue/sqlite_vfs.h"

#include <algorithm>
#include <atomic>
#include <new>
#include <vector>

namespace imgw::queue::sqlite {
namespace {

// A commit of 64 new pairs writes ~45 frames (185 KiB); larger transactions flush on the way.
constexpr size_t kBufferBytes = 256 * 1024;
// The unix VFS writes at most this much per xWrite call (its seekAndWrite masks the length
// with 0x1ffff), so a flush hands it the buffer in pieces no larger.
constexpr size_t kMaxWrite = 0x1ffff;

std::atomic<int64_t> g_writes{0};
std::atomic<int64_t> g_flushes{0};
std::atomic<int64_t> g_syncs{0};

sqlite3_vfs* g_base = nullptr;  // the default VFS, set once at registration

// SQLite allocates szOsFile bytes per open file and hands them to xOpen: ours, then the base
// VFS's file right after it.
struct File {
  sqlite3_file base;  // pMethods: kMethods once the real file is open, else nullptr
  bool wal;
  bool commit_sync;
  std::vector<char>* buffer;  // WAL files: the bytes from `start` not yet written
  sqlite3_int64 start;
  sqlite3_file* real() { return reinterpret_cast<sqlite3_file*>(this + 1); }
};
static_assert(sizeof(File) % 8 == 0, "the base VFS's file follows ours, aligned");

File* Of(sqlite3_file* file) { return reinterpret_cast<File*>(file); }

int Flush(File* f) {
  if (f->buffer == nullptr || f->buffer->empty()) return SQLITE_OK;
  g_flushes.fetch_add(1, std::memory_order_relaxed);
  int rc = SQLITE_OK;
  for (size_t done = 0; done < f->buffer->size() && rc == SQLITE_OK;) {
    const size_t piece = std::min(kMaxWrite, f->buffer->size() - done);
    rc = f->real()->pMethods->xWrite(f->real(), f->buffer->data() + done, static_cast<int>(piece),
                                     f->start + static_cast<sqlite3_int64>(done));
    done += piece;
  }
  // Dropped either way: SQLite sees the error (at the latest at the commit's xSync) and rolls
  // the transaction back, which writes its frames again, if ever, from its own pages.
  f->buffer->clear();
  return rc;
}

int Close(sqlite3_file* file) {
  File* f = Of(file);
  const int flushed = Flush(f);
  const int rc = f->real()->pMethods->xClose(f->real());
  delete f->buffer;
  f->buffer = nullptr;
  return flushed != SQLITE_OK ? flushed : rc;
}

int Read(sqlite3_file* file, void* out, int amount, sqlite3_int64 offset) {
  File* f = Of(file);
  if (f->buffer != nullptr && !f->buffer->empty() &&
      offset < f->start + static_cast<sqlite3_int64>(f->buffer->size()) &&
      offset + amount > f->start) {
    if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  }
  return f->real()->pMethods->xRead(f->real(), out, amount, offset);
}

int Write(sqlite3_file* file, const void* data, int amount, sqlite3_int64 offset) {
  File* f = Of(file);
  if (!f->wal) return f->real()->pMethods->xWrite(f->real(), data, amount, offset);
  g_writes.fetch_add(1, std::memory_order_relaxed);
  std::vector<char>& buffer = *f->buffer;
  const auto size = static_cast<size_t>(amount);
  const bool contiguous =
      buffer.empty() || offset == f->start + static_cast<sqlite3_int64>(buffer.size());
  if (!contiguous || buffer.size() + size > kBufferBytes) {
    if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  }
  // (A write larger than the buffer, which SQLite never makes, is buffered whole all the same:
  // Flush hands it over in pieces the unix VFS takes.)
  if (buffer.empty()) f->start = offset;
  const char* bytes = static_cast<const char*>(data);
  buffer.insert(buffer.end(), bytes, bytes + size);
  return SQLITE_OK;
}

int Truncate(sqlite3_file* file, sqlite3_int64 size) {
  File* f = Of(file);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return f->real()->pMethods->xTruncate(f->real(), size);
}

int Sync(sqlite3_file* file, int flags) {
  File* f = Of(file);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  // A commit's sync is SQLITE_SYNC_NORMAL; a checkpoint's SQLITE_SYNC_FULL (see the header).
  if (f->wal && !f->commit_sync && (flags & 0x0f) != SQLITE_SYNC_FULL) return SQLITE_OK;
  g_syncs.fetch_add(1, std::memory_order_relaxed);
  return f->real()->pMethods->xSync(f->real(), flags);
}

int FileSize(sqlite3_file* file, sqlite3_int64* size) {
  File* f = Of(file);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return f->real()->pMethods->xFileSize(f->real(), size);
}

int Lock(sqlite3_file* file, int level) {
  return Of(file)->real()->pMethods->xLock(Of(file)->real(), level);
}
int Unlock(sqlite3_file* file, int level) {
  return Of(file)->real()->pMethods->xUnlock(Of(file)->real(), level);
}
int CheckReservedLock(sqlite3_file* file, int* out) {
  return Of(file)->real()->pMethods->xCheckReservedLock(Of(file)->real(), out);
}
int FileControl(sqlite3_file* file, int op, void* arg) {
  File* f = Of(file);
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return f->real()->pMethods->xFileControl(f->real(), op, arg);
}
int SectorSize(sqlite3_file* file) {
  return Of(file)->real()->pMethods->xSectorSize(Of(file)->real());
}
int DeviceCharacteristics(sqlite3_file* file) {
  return Of(file)->real()->pMethods->xDeviceCharacteristics(Of(file)->real());
}
// The shared-memory and memory-map methods exist from version 2 and 3 of the base's methods.
int ShmMap(sqlite3_file* file, int page, int size, int extend, void volatile** out) {
  const sqlite3_io_methods* m = Of(file)->real()->pMethods;
  return m->iVersion >= 2 ? m->xShmMap(Of(file)->real(), page, size, extend, out)
                          : SQLITE_IOERR_SHMMAP;
}
int ShmLock(sqlite3_file* file, int offset, int n, int flags) {
  const sqlite3_io_methods* m = Of(file)->real()->pMethods;
  return m->iVersion >= 2 ? m->xShmLock(Of(file)->real(), offset, n, flags) : SQLITE_IOERR_SHMLOCK;
}
void ShmBarrier(sqlite3_file* file) {
  const sqlite3_io_methods* m = Of(file)->real()->pMethods;
  if (m->iVersion >= 2) m->xShmBarrier(Of(file)->real());
}
int ShmUnmap(sqlite3_file* file, int remove) {
  const sqlite3_io_methods* m = Of(file)->real()->pMethods;
  return m->iVersion >= 2 ? m->xShmUnmap(Of(file)->real(), remove) : SQLITE_OK;
}
int Fetch(sqlite3_file* file, sqlite3_int64 offset, int amount, void** out) {
  File* f = Of(file);
  const sqlite3_io_methods* m = f->real()->pMethods;
  *out = nullptr;
  if (m->iVersion < 3) return SQLITE_OK;  // no mapping: SQLite reads instead
  if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  return m->xFetch(f->real(), offset, amount, out);
}
int Unfetch(sqlite3_file* file, sqlite3_int64 offset, void* page) {
  const sqlite3_io_methods* m = Of(file)->real()->pMethods;
  return m->iVersion >= 3 ? m->xUnfetch(Of(file)->real(), offset, page) : SQLITE_OK;
}

const sqlite3_io_methods kMethods = {
    3,
    Close,
    Read,
    Write,
    Truncate,
    Sync,
    FileSize,
    Lock,
    Unlock,
    CheckReservedLock,
    FileControl,
    SectorSize,
    DeviceCharacteristics,
    ShmMap,
    ShmLock,
    ShmBarrier,
    ShmUnmap,
    Fetch,
    Unfetch,
};

int Open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* file, int flags, int* out_flags) {
  File* f = Of(file);
  f->base.pMethods = nullptr;
  f->wal = (flags & SQLITE_OPEN_WAL) != 0;
  f->commit_sync = true;
  f->buffer = nullptr;
  f->start = 0;
  const int rc = g_base->xOpen(g_base, name, f->real(), flags, out_flags);
  // SQLite calls xClose whenever pMethods is set, failed open or not: set it as the base did.
  if (f->real()->pMethods == nullptr) return rc;
  if (f->wal) {
    f->buffer = new (std::nothrow) std::vector<char>();
    if (f->buffer == nullptr) {
      f->real()->pMethods->xClose(f->real());
      return SQLITE_NOMEM;
    }
    f->buffer->reserve(kBufferBytes);
  }
  f->base.pMethods = &kMethods;
  return rc;
}

// The rest of the VFS is the base's.
int Delete(sqlite3_vfs*, const char* name, int sync) { return g_base->xDelete(g_base, name, sync); }
int Access(sqlite3_vfs*, const char* name, int flags, int* out) {
  return g_base->xAccess(g_base, name, flags, out);
}
int FullPathname(sqlite3_vfs*, const char* name, int size, char* out) {
  return g_base->xFullPathname(g_base, name, size, out);
}
void* DlOpen(sqlite3_vfs*, const char* name) { return g_base->xDlOpen(g_base, name); }
void DlError(sqlite3_vfs*, int size, char* out) { g_base->xDlError(g_base, size, out); }
void (*DlSym(sqlite3_vfs*, void* handle, const char* symbol))(void) {
  return g_base->xDlSym(g_base, handle, symbol);
}
void DlClose(sqlite3_vfs*, void* handle) { g_base->xDlClose(g_base, handle); }
int Randomness(sqlite3_vfs*, int size, char* out) { return g_base->xRandomness(g_base, size, out); }
int Sleep(sqlite3_vfs*, int micros) { return g_base->xSleep(g_base, micros); }
int CurrentTime(sqlite3_vfs*, double* out) { return g_base->xCurrentTime(g_base, out); }
int GetLastError(sqlite3_vfs*, int size, char* out) {
  return g_base->xGetLastError(g_base, size, out);
}
int CurrentTimeInt64(sqlite3_vfs*, sqlite3_int64* out) {
  return g_base->xCurrentTimeInt64(g_base, out);
}

constexpr char kName[] = "imgw-buffered-wal";

sqlite3_vfs* Register() {
  g_base = sqlite3_vfs_find(nullptr);
  static sqlite3_vfs vfs = {};
  vfs.iVersion = 2;
  vfs.szOsFile = static_cast<int>(sizeof(File)) + g_base->szOsFile;
  vfs.mxPathname = g_base->mxPathname;
  vfs.zName = kName;
  vfs.xOpen = Open;
  vfs.xDelete = Delete;
  vfs.xAccess = Access;
  vfs.xFullPathname = FullPathname;
  vfs.xDlOpen = DlOpen;
  vfs.xDlError = DlError;
  vfs.xDlSym = DlSym;
  vfs.xDlClose = DlClose;
  vfs.xRandomness = Randomness;
  vfs.xSleep = Sleep;
  vfs.xCurrentTime = CurrentTime;
  vfs.xGetLastError = GetLastError;
  vfs.xCurrentTimeInt64 = CurrentTimeInt64;
  sqlite3_vfs_register(&vfs, /*makeDflt=*/0);
  return &vfs;
}

}  // namespace

const char* BufferedWalVfs() {
  static sqlite3_vfs* vfs = Register();
  return vfs->zName;
}

bool SetCommitSync(sqlite3* db, bool sync) {
  sqlite3_file* wal = nullptr;
  if (sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) != SQLITE_OK ||
      wal == nullptr || wal->pMethods != &kMethods || !Of(wal)->wal) {
    return false;
  }
  Of(wal)->commit_sync = sync;
  return true;
}

BufferedWalCounters ReadBufferedWalCounters() {
  return {g_writes.load(std::memory_order_relaxed), g_flushes.load(std::memory_order_relaxed),
          g_syncs.load(std::memory_order_relaxed)};
}

}  // namespace imgw::queue::sqlite
