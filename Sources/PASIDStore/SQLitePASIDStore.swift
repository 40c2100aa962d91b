import PASIDAllocators
import Glibc
import Synchronization

/// The host-wide allocator: one SQLite database (the system libsqlite3, WAL mode) shared by every
/// vhost-iommu process on the host.
///
/// Durability: each change is one transaction, so a process killed at any point (SIGKILL included)
/// leaves the store as it was before or after that change. `synchronous=NORMAL` survives any process
/// crash; it may lose the last transactions on a host power loss, when every PASID holder dies anyway.
///
/// Reclaiming: a daemon registers its owner (VM) with a lease — its pid and process start time.
/// PASIDs whose owner's lease names a process that is gone are reclaimed when any process registers,
/// lists, or finds the space exhausted. Owners without a lease (tests, admin) are never reclaimed.
public final class SQLitePASIDStore: PASIDAllocator {
    public let width: Int
    public let path: String
    private let connection: Mutex<SQLiteConnection>
    private let writerLock: WriterLock

    /// Opens (creating if needed) the store at `path`. `width` applies when the store is created; an
    /// existing store keeps its own, and asking for a different one is an error.
    public init(path: String, width requestedWidth: Int? = nil) throws(PASIDStoreError) {
        if let requestedWidth, !(1...maxPASIDWidth).contains(requestedWidth) { throw .invalidWidth(requestedWidth) }
        let writerLock = try WriterLock(path: path + ".lock")
        let db = try SQLiteConnection(path: path)
        try db.execute("PRAGMA journal_mode=WAL")
        try db.execute("PRAGMA synchronous=NORMAL")
        let width = try db.transaction { () throws(PASIDStoreError) -> Int in
            try db.execute("""
                CREATE TABLE IF NOT EXISTS settings(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS owners(name TEXT PRIMARY KEY, quota INTEGER, pid INTEGER, start_time INTEGER);
                CREATE TABLE IF NOT EXISTS pasids(pasid INTEGER PRIMARY KEY, owner TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS pasids_by_owner ON pasids(owner);
                """)
            if let stored = try db.integer("SELECT value FROM settings WHERE name = 'width'") {
                if let requestedWidth, requestedWidth != Int(stored) { throw .invalidWidth(requestedWidth) }
                return Int(stored)
            }
            let width = requestedWidth ?? maxPASIDWidth
            try db.query("INSERT INTO settings(name, value) VALUES ('width', ?), ('default_quota', ?)",
                         [.integer(Int64(width)), .integer(Int64(standardQuota(width: width)))])
            return width
        }
        self.width = width
        self.path = path
        self.writerLock = writerLock
        connection = Mutex(db)
    }

    /// A write transaction, queued behind other processes' writes on the writer lock.
    private func write<T>(_ db: SQLiteConnection, _ body: () throws(PASIDStoreError) -> T) throws(PASIDStoreError) -> T {
        try writerLock.withLock { () throws(PASIDStoreError) -> T in try db.transaction(body) }
    }

    /// Takes `owner`'s lease for this process. A previous holder that is dead loses its PASIDs;
    /// one that is alive keeps them and this call fails.
    public func register(owner: String, quota: Int? = nil, lease me: ProcessLease = .current) throws(PASIDStoreError) {
        try connection.withLock { db throws(PASIDStoreError) in
            try write(db) { () throws(PASIDStoreError) in
                if let holder = try lease(of: owner, db), holder.pid != me.pid || holder.startTime != me.startTime {
                    guard !holder.isAlive else { throw .ownerInUse(owner: owner, pid: holder.pid) }
                    try db.query("DELETE FROM pasids WHERE owner = ?", [.text(owner)])
                }
                try db.query("""
                    INSERT INTO owners(name, quota, pid, start_time) VALUES (?1, ?2, ?3, ?4)
                    ON CONFLICT(name) DO UPDATE SET pid = ?3, start_time = ?4, quota = COALESCE(?2, quota)
                    """, [.text(owner), quota.map { .integer(Int64($0)) } ?? .null, .integer(Int64(me.pid)), .integer(me.startTime)])
                try reclaimDeadOwners(db)
            }
        }
    }

    /// Gives `owner`'s PASIDs back and drops its lease (a clean exit).
    public func unregister(owner: String) throws(PASIDStoreError) {
        try connection.withLock { db throws(PASIDStoreError) in
            try write(db) { () throws(PASIDStoreError) in
                try db.query("DELETE FROM pasids WHERE owner = ?", [.text(owner)])
                try db.query("UPDATE owners SET pid = NULL, start_time = NULL WHERE name = ?", [.text(owner)])
            }
        }
    }

    /// Frees the PASIDs of an owner whose process is gone (admin). A live owner is refused.
    @discardableResult
    public func release(owner: String) throws(PASIDStoreError) -> Int {
        try connection.withLock { db throws(PASIDStoreError) -> Int in
            try write(db) { () throws(PASIDStoreError) -> Int in
                if let holder = try lease(of: owner, db), holder.isAlive { throw .ownerInUse(owner: owner, pid: holder.pid) }
                try db.query("DELETE FROM pasids WHERE owner = ?", [.text(owner)])
                let count = db.changes
                try db.query("UPDATE owners SET pid = NULL, start_time = NULL WHERE name = ?", [.text(owner)])
                return count
            }
        }
    }

    public func allocate(owner: String, in range: ClosedRange<PASID>?) throws(PASIDStoreError) -> PASID {
        let range = try resolve(range)
        return try connection.withLock { db throws(PASIDStoreError) -> PASID in
            // An owner at its quota is refused without taking the write lock, so a guest that floods
            // ALLOC_PASID cannot slow other VMs down.
            try checkQuota(owner, db)
            return try write(db) { () throws(PASIDStoreError) -> PASID in
                try checkQuota(owner, db)
                var pasid = try lowestFree(range, db)
                if pasid == nil, try reclaimDeadOwners(db) > 0 { pasid = try lowestFree(range, db) }
                guard let pasid else { throw .exhausted }
                try db.query("INSERT INTO pasids(pasid, owner) VALUES (?, ?)", [.integer(Int64(pasid)), .text(owner)])
                return pasid
            }
        }
    }

    private func checkQuota(_ owner: String, _ db: SQLiteConnection) throws(PASIDStoreError) {
        let ownQuota = try db.integer("SELECT quota FROM owners WHERE name = ?", [.text(owner)])
        let standard = try db.integer("SELECT value FROM settings WHERE name = 'default_quota'") ?? 0
        let quota = ownQuota ?? standard
        let held = try db.integer("SELECT COUNT(*) FROM pasids WHERE owner = ?", [.text(owner)]) ?? 0
        guard held < quota else { throw .quotaExceeded(owner: owner, quota: Int(quota)) }
    }

    /// The lowest PASID in `range` that no one holds: the range's start, or the first gap after it.
    private func lowestFree(_ range: ClosedRange<PASID>, _ db: SQLiteConnection) throws(PASIDStoreError) -> PASID? {
        let candidate = try db.integer("""
            SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM pasids WHERE pasid = ?1) THEN ?1
                   ELSE (SELECT p.pasid + 1 FROM pasids p WHERE p.pasid >= ?1
                         AND NOT EXISTS (SELECT 1 FROM pasids q WHERE q.pasid = p.pasid + 1)
                         ORDER BY p.pasid LIMIT 1) END
            """, [.integer(Int64(range.lowerBound))])
        guard let candidate, candidate <= Int64(range.upperBound) else { return nil }
        return PASID(candidate)
    }

    public func free(_ pasid: PASID, owner: String) throws(PASIDStoreError) {
        try connection.withLock { db throws(PASIDStoreError) in
            try write(db) { () throws(PASIDStoreError) in
                try db.query("DELETE FROM pasids WHERE pasid = ? AND owner = ?", [.integer(Int64(pasid)), .text(owner)])
                guard db.changes == 1 else { throw .notHeld(pasid) }
            }
        }
    }

    public func releaseAll(owner: String) throws(PASIDStoreError) -> Int {
        try connection.withLock { db throws(PASIDStoreError) -> Int in
            try write(db) { () throws(PASIDStoreError) -> Int in
                try db.query("DELETE FROM pasids WHERE owner = ?", [.text(owner)])
                return db.changes
            }
        }
    }

    public func setQuota(_ quota: Int, owner: String?) throws(PASIDStoreError) {
        guard quota >= 0 else { throw .invalidRange }
        try connection.withLock { db throws(PASIDStoreError) in
            if let owner {
                try db.query("INSERT INTO owners(name, quota) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET quota = ?2",
                             [.text(owner), .integer(Int64(quota))])
            } else {
                try db.query("UPDATE settings SET value = ? WHERE name = 'default_quota'", [.integer(Int64(quota))])
            }
        }
    }

    public func allocations() throws(PASIDStoreError) -> [PASIDAllocation] {
        try connection.withLock { db throws(PASIDStoreError) -> [PASIDAllocation] in
            try reclaimIfNeeded(db)
            var result: [PASIDAllocation] = []
            try db.query("SELECT pasid, owner FROM pasids ORDER BY pasid") {
                result.append(PASIDAllocation(pasid: PASID($0.integer(0)), owner: $0.text(1)))
            }
            return result
        }
    }

    public func statistics() throws(PASIDStoreError) -> PASIDStoreStatistics {
        try connection.withLock { db throws(PASIDStoreError) -> PASIDStoreStatistics in
            try reclaimIfNeeded(db)
            var owners: [PASIDStoreStatistics.Owner] = []
            try db.query("""
                SELECT o.name, (SELECT COUNT(*) FROM pasids p WHERE p.owner = o.name), o.quota, o.pid, o.start_time
                FROM owners o UNION ALL
                SELECT DISTINCT p.owner, (SELECT COUNT(*) FROM pasids q WHERE q.owner = p.owner), NULL, NULL, NULL
                FROM pasids p WHERE p.owner NOT IN (SELECT name FROM owners) ORDER BY 1
                """) { row in
                let lease = row.isNull(3) ? nil : ProcessLease(pid: Int32(row.integer(3)), startTime: row.integer(4))
                owners.append(.init(name: row.text(0), allocated: Int(row.integer(1)),
                                    quota: row.isNull(2) ? nil : Int(row.integer(2)),
                                    pid: lease?.pid, alive: lease?.isAlive ?? false))
            }
            return PASIDStoreStatistics(
                width: width, capacity: (1 << width) - 1,
                allocated: Int(try db.integer("SELECT COUNT(*) FROM pasids") ?? 0),
                defaultQuota: Int(try db.integer("SELECT value FROM settings WHERE name = 'default_quota'") ?? 0),
                owners: owners)
        }
    }

    /// Runs SQLite's own consistency check (for tests after a crash); true when it reports "ok".
    public func integrityCheck() throws(PASIDStoreError) -> Bool {
        try connection.withLock { db throws(PASIDStoreError) -> Bool in
            var result = ""
            try db.query("PRAGMA integrity_check") { result = $0.text(0) }
            return result == "ok"
        }
    }

    private func lease(of owner: String, _ db: SQLiteConnection) throws(PASIDStoreError) -> ProcessLease? {
        var lease: ProcessLease?
        try db.query("SELECT pid, start_time FROM owners WHERE name = ? AND pid IS NOT NULL", [.text(owner)]) {
            lease = ProcessLease(pid: Int32($0.integer(0)), startTime: $0.integer(1))
        }
        return lease
    }

    /// Owners whose leased process is gone (a read, no lock).
    private func deadOwners(_ db: SQLiteConnection) throws(PASIDStoreError) -> [String] {
        var dead: [String] = []
        try db.query("SELECT name, pid, start_time FROM owners WHERE pid IS NOT NULL") {
            if !ProcessLease(pid: Int32($0.integer(1)), startTime: $0.integer(2)).isAlive { dead.append($0.text(0)) }
        }
        return dead
    }

    /// Readers take the write lock only when there is something to reclaim.
    private func reclaimIfNeeded(_ db: SQLiteConnection) throws(PASIDStoreError) {
        guard try !deadOwners(db).isEmpty else { return }
        try write(db) { () throws(PASIDStoreError) in _ = try reclaimDeadOwners(db) }
    }

    /// Frees the PASIDs of every owner whose leased process is gone; returns how many. Call inside a transaction.
    @discardableResult
    private func reclaimDeadOwners(_ db: SQLiteConnection) throws(PASIDStoreError) -> Int {
        let dead = try deadOwners(db)
        var reclaimed = 0
        for owner in dead {
            try db.query("DELETE FROM pasids WHERE owner = ?", [.text(owner)])
            reclaimed += db.changes
            try db.query("UPDATE owners SET pid = NULL, start_time = NULL WHERE name = ?", [.text(owner)])
        }
        return reclaimed
    }
}
