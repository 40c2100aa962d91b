import PASIDAllocators
import CSQLite

/// A minimal wrapper over one SQLite connection: statements with bound integers and text, and
/// transactions that roll back when their body throws.
final class SQLiteConnection {
    enum Value {
        case integer(Int64)
        case text(String)
        case null
    }

    private let handle: OpaquePointer
    /// Prepared statements by SQL text: preparing (parsing and planning) cost more than running them.
    private var statements: [String: OpaquePointer] = [:]

    init(path: String) throws(PASIDStoreError) {
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX
        guard sqlite3_open_v2(path, &db, flags, nil) == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw .storage("cannot open \(path): \(message)")
        }
        handle = db
        // Other processes may hold the write lock for a moment: wait rather than fail.
        sqlite3_busy_timeout(handle, 10_000)
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close_v2(handle)
    }

    private var lastError: String { String(cString: sqlite3_errmsg(handle)) }

    func execute(_ sql: String) throws(PASIDStoreError) {
        var message: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(handle, sql, nil, nil, &message) == SQLITE_OK else {
            let text = message.map { String(cString: $0) } ?? lastError
            sqlite3_free(message)
            throw .storage(text)
        }
    }

    /// Runs `sql` with `bindings`, calling `row` for each result row with a column reader.
    func query(_ sql: String, _ bindings: [Value] = [], row: (Row) -> Void = { _ in }) throws(PASIDStoreError) {
        let statement = try prepared(sql)
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        for (i, value) in bindings.enumerated() {
            let index = Int32(i + 1)
            switch value {
            case .integer(let n): sqlite3_bind_int64(statement, index, n)
            case .text(let s): sqlite3_bind_text(statement, index, s, -1, csqlite_transient())
            case .null: sqlite3_bind_null(statement, index)
            }
        }
        while true {
            let result = sqlite3_step(statement)
            if result == SQLITE_DONE { return }
            guard result == SQLITE_ROW else { throw .storage(lastError) }
            row(Row(statement: statement))
        }
    }

    private func prepared(_ sql: String) throws(PASIDStoreError) -> OpaquePointer {
        if let statement = statements[sql] { return statement }
        var statement: OpaquePointer?
        guard sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK,
              let statement else {
            throw .storage(lastError)
        }
        statements[sql] = statement
        return statement
    }

    /// The first column of the first row as an integer, if any.
    func integer(_ sql: String, _ bindings: [Value] = []) throws(PASIDStoreError) -> Int64? {
        var value: Int64?
        try query(sql, bindings) { if value == nil { value = $0.isNull(0) ? nil : $0.integer(0) } }
        return value
    }

    var changes: Int { Int(sqlite3_changes(handle)) }

    /// BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue instead of deadlocking.
    func transaction<T>(_ body: () throws(PASIDStoreError) -> T) throws(PASIDStoreError) -> T {
        try query("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try query("COMMIT")
            return result
        } catch {
            try? query("ROLLBACK")
            throw error
        }
    }

    struct Row {
        let statement: OpaquePointer
        func integer(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }
        func isNull(_ column: Int32) -> Bool { sqlite3_column_type(statement, column) == SQLITE_NULL }
        func text(_ column: Int32) -> String {
            sqlite3_column_text(statement, column).map { String(cString: $0) } ?? ""
        }
    }
}
